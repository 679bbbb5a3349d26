"""CLI: output, files, and one-line errors instead of tracebacks."""
import json

import pytest
import yaml
from typer.testing import CliRunner

from sim.cli import app
from tests.conftest import ROOT, small_config

runner = CliRunner()


def cfg_file(tmp_path, **over):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(small_config(**over)))
    return p


def test_run_prints_table_and_writes_outputs(tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["run", str(cfg_file(tmp_path)), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "TTFT" in r.output and "throughput" in r.output
    for f in ("summary.json", "requests.parquet", "iterations.parquet", "config.resolved.yaml"):
        assert (out / f).exists()
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["engine"]["max_num_seqs"] == 32 and resolved["fast_forward"] is True


def test_run_json_and_set(tmp_path):
    r = runner.invoke(app, ["run", str(cfg_file(tmp_path)), "--json", "--no-progress",
                            "--set", "workload.num_requests=50",
                            "--set", "workload.output_tokens={name: fixed, params: {value: 4}}"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["num_requests"] == 50 and s["num_completed"] == 50


def check_error(args, *fragments):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for f in fragments:
        assert f in r.output, (f, r.output)


def test_bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [x\n")
    check_error(["run", str(p)], str(p), "invalid YAML")


def test_unknown_model_and_hardware(tmp_path):
    p = cfg_file(tmp_path)
    check_error(["run", str(p), "--set", "model=gpt-9"], "unknown model 'gpt-9'", "llama-3.1-8b")
    check_error(["run", str(p), "--set", "hardware=h900"], "unknown hardware 'h900'", "h100_sxm")


def test_impossible_values(tmp_path):
    p = cfg_file(tmp_path)
    check_error(["run", str(p), "--set", "engine.max_num_seqs=-1"], str(p), "engine.max_num_seqs", ">= 1")
    check_error(["run", str(p), "--set", "model=llama-3.1-70b"], str(p), "llama-3.1-70b needs", "GB per GPU",
                "smallest layout that fits is tp=2")
    check_error(["run", str(p), "--set", "parallelism.tp=3"], "parallelism.tp", "must divide")
    check_error(["run", str(p), "--set", "parallelism.pp=33"], "parallelism.pp")
    check_error(["run", str(p), "--set", "cluster={pools: [{name: a, num_replicas: 0}]}"],
                "cluster.pools[0].num_replicas", ">= 1")
    check_error(["run", str(p), "--set", "cluster={router: {name: nope}, pools: [{name: a, num_replicas: 2}]}"],
                "cluster.router", "unknown router")
    check_error(["run", str(p), "--set", "cluster={pools: [{name: a, replica: 2}]}"], "cluster.pools[0].replica")
    check_error(["run", str(p), "--set", "engine.max_num_batched_tokens=8"], "engine.max_num_batched_tokens")
    check_error(["run", str(p), "--set", "workload.arrival={name: poison, params: {}}"],
                "workload.arrival.name", "poisson")
    check_error(["run", str(p), "--set", "workload.arrival.params={rate: 3}"], "workload.arrival.params.rate")
    check_error(["run", str(p), "--set", "workload.prompt_tokens.params={low: 9, high: 2}"], "workload.prompt_tokens")
    check_error(["run", str(tmp_path / "missing.yaml")], "missing.yaml", "no such file")


def test_models_hardware_and_cost():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "qwen2.5-72b" in r.output
    r = runner.invoke(app, ["hardware"])
    assert r.exit_code == 0 and "rtx_5070_ti" in r.output and "t4" in r.output
    r = runner.invoke(app, ["cost", "gemm", "--hardware", "h100_sxm", "--m", "128", "--n", "6144", "--k", "4096", "--json"])
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["time_s"] > 0 and d["flops"] == 2 * 128 * 6144 * 4096
    r = runner.invoke(app, ["cost", "attention-decode", "--hardware", "h200_sxm", "--batch", "64", "--context", "2048",
                            "--heads", "32", "--kv-heads", "8", "--head-dim", "128"])
    assert r.exit_code == 0 and float(r.output) > 0
    check_error(["cost", "gemm", "--hardware", "nope", "--m", "1", "--n", "1", "--k", "1"], "unknown hardware")


# -- servesim cost step ----------------------------------------------------------------------------
def _step_json(*args):
    r = runner.invoke(app, ["cost", "step", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_cost_step_json_parts_and_library_price():
    from sim.config import EngineConfig
    from sim.cost.base import BatchShape
    from sim.cost.roofline import RooflineCost
    from sim.hardware import load_hardware
    from sim.model_spec import load_model

    d = _step_json("--model", "llama-3.1-8b", "--hardware", "h200_sxm", "--prefill", "2048x1,512x4",
                   "--decode-batch", "64", "--decode-context", "1024")
    for k in ("time_s", "gemm_s", "attn_s", "other_s", "comm_s", "host_s"):
        assert isinstance(d[k], float)
    assert d["time_s"] == pytest.approx(d["gemm_s"] + d["attn_s"] + d["other_s"] + d["comm_s"] + d["host_s"])
    assert d["host_s"] == EngineConfig().host_overhead_s and d["comm_s"] == 0.0
    assert d["shape"] == {"prefill": "2048x1,512x4", "decode": "64@1024", "num_prefill_chunks": 5,
                          "num_prefill_tokens": 4096, "num_decode": 64, "decode_context_sum": 65536,
                          "num_sampled": 69, "num_tokens": 4160}
    ref = RooflineCost(load_model("llama-3.1-8b"), load_hardware("h200_sxm"), EngineConfig().host_overhead_s)
    shape = BatchShape([(2048, 0)] + [(512, 0)] * 4, 64, 65536, 69)
    assert d["time_s"] == ref.step_time(shape).total_s
    plain = runner.invoke(app, ["cost", "step", "--model", "llama-3.1-8b", "--hardware", "h200_sxm", "--prefill",
                                "2048x1,512x4", "--decode-context", "64@1024"])
    assert plain.exit_code == 0 and float(plain.output) == pytest.approx(d["time_s"], rel=1e-6)


def test_cost_step_tp_graphs_and_host():
    one = _step_json("--model", "llama-3.1-8b", "--hardware", "h100_sxm", "--decode-context", "32@2048",
                     "--host-overhead-s", "0")
    tp2 = _step_json("--model", "llama-3.1-8b", "--hardware", "h100_sxm", "--decode-context", "32@2048",
                     "--host-overhead-s", "0", "--tp", "2")
    assert one["host_s"] == 0.0 and tp2["comm_s"] > 0 and tp2["tp"] == 2
    assert 0.4 * one["gemm_s"] < tp2["gemm_s"] < 0.75 * one["gemm_s"]  # half the weights per GPU, launches stay
    eager = _step_json("--model", "llama-3.1-8b", "--hardware", "h200_sxm", "--decode-batch", "3",
                       "--decode-context", "100")
    graph = _step_json("--model", "llama-3.1-8b", "--hardware", "h200_sxm", "--decode-batch", "3",
                       "--decode-context", "100", "--cuda-graphs", "--graph-launch-s", "0")
    padded = _step_json("--model", "llama-3.1-8b", "--hardware", "h200_sxm", "--decode-batch", "4",
                        "--decode-context", "100", "--graph-launch-s", "0")
    assert graph["padded_decode_batch"] == 4 and graph["graph_launch_s"] == 0.0
    assert graph["time_s"] < padded["time_s"] and graph["time_s"] < eager["time_s"] + 1e-3
    mixed = _step_json("--model", "llama-3.1-8b", "--hardware", "h200_sxm", "--prefill", "16x1",
                       "--decode-context", "2@64:128", "--cuda-graphs")
    assert mixed["padded_decode_batch"] is None and mixed["shape"]["decode_context_sum"] == 192


def test_cost_step_errors():
    base = ["cost", "step", "--model", "llama-3.1-8b", "--hardware", "h200_sxm"]
    check_error(base + ["--prefill", "2048y1"], "--prefill", "NEW[+PRIOR]xCOUNT")
    check_error(base + ["--decode-context", "5@0"], "--decode-context", "COUNT@CTX")
    check_error(base, "empty step")
    check_error(base + ["--decode-context", "1024"], "needs --decode-batch")
    check_error(base + ["--decode-batch", "8"], "needs --decode-context")
    check_error(base + ["--decode-batch", "3", "--decode-context", "2@5"], "disagrees")
    check_error(base + ["--prefill", "16x1", "--tp", "3"], "--tp", "32 attention heads")
    check_error(base + ["--prefill", "16x1", "--pp", "40"], "--pp", "32 layers")
    check_error(base + ["--prefill", "16x1", "--sampled", "2"], "--sampled")
    check_error(base + ["--prefill", "16x1", "--host-overhead-s", "-1"], "--host-overhead-s")
    check_error(base + ["--prefill", "16x1", "--backend", "nope"], "backend", "nope")
    check_error(["cost", "step", "--model", "gpt-9", "--hardware", "h200_sxm", "--prefill", "16x1"], "unknown model")
