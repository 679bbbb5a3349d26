"""servesim: a discrete-event simulator of LLM serving clusters.

    import sim
    res = sim.run("workloads/default.yaml", engine__max_num_seqs=128)
    res.requests      # one row per request (pandas)
    res.iterations    # one row per engine iteration
    res.summary()     # TTFT/TPOT/ITL/E2E percentiles, throughput, goodput, saturation
    reps = sim.run_replicates("workloads/default.yaml", n=10)
    reps.intervals    # p10/p50/p90 of the summary metrics across cost-noise replicates
"""
from sim.config import ConfigError, SimConfig, load_config
from sim.simulator import Results, run, simulate
from sim.replicates import Replicates, run_replicates

__all__ = ["run", "simulate", "Results", "SimConfig", "load_config", "ConfigError", "run_replicates", "Replicates"]
__version__ = "0.1.0"
