"""Run intervals from cost-noise replicates: the same config and seed run n times, replicate i
with its pools' step prices scaled by draw i of the hardware profile's residuals.

    reps = sim.run_replicates("workloads/default.yaml", n=10)
    reps.intervals["ttft_s.p99"]   # {'p10': ..., 'p50': ..., 'p90': ...} across replicates
    reps.base.summary()            # the plain run (no cost noise): the point estimate
    print(reps.format())

Models: the uncertainty a calibrated cost model carries into a run's summary metrics. Replicate
i runs with ``cost_noise_replicate = i`` (``sim.cost.noise``): every replicate is drawn, none is
the unscaled run, so the n replicates are n independent draws of "the real GPU"; the unscaled
run is run as well and reported beside them as ``base``. Everything else (arrivals, lengths,
routing) is the same seed, so the spread across replicates is the cost model's alone. With
the step-level term of a profile that has one (H200), the replicates' p50 need not be the
plain run's figure: that term's median is the price's known systematic error (long prefill
steps run ~7 % slower than priced).

Ignores: the sampling noise of the workload itself (vary ``seed`` for that), and correlation of
the draws of different profiles (a pool on other hardware draws its own factors).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from sim.config import ConfigError, SimConfig, load_config
from sim.simulator import Results, simulate

LEVELS = (10, 50, 90)
# the summary metrics given an interval, in display order (goodput only when an SLO is set)
METRICS = tuple(f"{m}.{s}" for m in ("ttft_s", "tpot_s", "itl_s", "e2e_s") for s in ("mean", "p50", "p90", "p99")) + (
    "output_tokens_per_s", "requests_per_s", "goodput_requests_per_s", "slo_attainment_frac")


def metric(summary: Mapping, name: str) -> float | None:
    """A summary value by dotted name (``ttft_s.p99``); None when absent."""
    v: Any = summary
    for part in name.split("."):
        if not isinstance(v, Mapping) or part not in v:
            return None
        v = v[part]
    return None if v is None else float(v)


def intervals(summaries: list[Mapping], levels=LEVELS) -> dict[str, dict[str, float]]:
    """{metric: {'p10': .., 'p50': .., 'p90': ..}} across ``summaries`` (numpy's linear
    percentiles; a metric missing from any summary is left out)."""
    out = {}
    for name in METRICS:
        vals = [metric(s, name) for s in summaries]
        if not vals or any(v is None for v in vals):
            continue
        q = np.percentile(np.asarray(vals, dtype=float), levels)
        out[name] = {f"p{lv}": float(v) for lv, v in zip(levels, q)}
    return out


@dataclass(frozen=True)
class Replicates:
    """A plain run and ``n`` cost-noise replicates of the same config and seed."""

    config: SimConfig
    base: Results
    summaries: tuple[dict, ...]
    factors: tuple[dict, ...]  # per replicate: {pool name: its CostFactors as a dict}

    @property
    def n(self) -> int:
        return len(self.summaries)

    @property
    def intervals(self) -> dict[str, dict[str, float]]:
        return intervals(list(self.summaries))

    def to_dict(self) -> dict:
        """{'replicates', 'intervals', 'factors'}: what ``servesim run --json`` adds."""
        return {"replicates": self.n, "intervals": self.intervals, "factors": list(self.factors)}

    def save(self, out_dir: str | Path) -> Path:
        """Write replicates.json: ``to_dict()`` and every replicate's summary."""
        import json
        p = Path(out_dir) / "replicates.json"
        p.write_text(json.dumps({**self.to_dict(), "summaries": list(self.summaries)}, indent=2) + "\n")
        return p

    def format(self) -> str:
        """The plain run's value and the p10 / p50 / p90 across replicates of each metric."""
        base = self.base.summary()
        lines = [f"cost-noise replicates: {self.n} (step prices scaled by draws of the profile's held-out residuals)",
                 f"{'metric':<22}{'plain':>10}{'p10':>10}{'p50':>10}{'p90':>10}"]
        for name, q in self.intervals.items():
            ms = not name.endswith(("_per_s", "_frac"))
            label = f"{name.split('_s.')[0].upper()} {name.split('.')[1]} (ms)" if ms else name
            k = 1e3 if ms else 1.0
            b = metric(base, name)
            cells = [b] + [q[f"p{lv}"] for lv in LEVELS]
            lines.append(f"{label:<22}" + "".join("-".rjust(10) if v is None else f"{v * k:>10.2f}" for v in cells))
        return "\n".join(lines)


def replicate_factors(cfg: SimConfig, replicate: int) -> dict:
    """{pool name: factors as a dict} of one replicate (what ``build_pools`` draws)."""
    from dataclasses import asdict

    from sim.cluster.build import build_pools
    c = _with_replicate(cfg, replicate)
    return {p.name: asdict(p.cost.factors) for p in build_pools(c)}


def _with_replicate(cfg: SimConfig, replicate: int | None) -> SimConfig:
    import dataclasses
    return dataclasses.replace(cfg, cost_noise_replicate=replicate)


def run_replicates(config: str | Path | Mapping[str, Any] | SimConfig, n: int = 10,
                   progress: Callable[[int, int], None] | None = None, **overrides: Any) -> Replicates:
    """Run ``config`` (with keyword ``overrides`` as in ``sim.run``) once plainly and ``n`` times
    with cost noise (replicates 0 .. n-1); ``progress(done, n + 1)`` after each run."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("replicates", f"expected an integer >= 1, got {n!r}")
    cfg = load_config(config, overrides or None)
    base = simulate(_with_replicate(cfg, None))
    if progress is not None:
        progress(1, n + 1)
    sums, facs = [], []
    for i in range(n):
        c = _with_replicate(cfg, i)
        sums.append(simulate(c).summary())
        facs.append(replicate_factors(cfg, i))
        if progress is not None:
            progress(i + 2, n + 1)
    return Replicates(cfg, base, tuple(sums), tuple(facs))
