"""SLO attainment: which completed requests met their latency targets, overall and per class.

Models: a request meets the SLO when its TTFT, TPOT and E2E are each within the targets of
its priority class (``SLOConfig.targets_for(requests.priority)``); a target that is not set
always holds, and so does TPOT for a request with a single output token (no TPOT). Goodput
is the number of requests that met it per second of the run; attainment is the fraction of
completed requests that met it. With ``slo.classes`` the summary also gets ``slo_by_class``.

Ignores: rejected and unfinished requests (they are in neither goodput nor the attainment
denominator, as for the all-requests figures).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

_METRICS = ("ttft_s", "tpot_s", "e2e_s")


def _thresholds(slo, prio: np.ndarray, name: str) -> np.ndarray:
    """Per-row target of ``name`` (inf where none applies)."""
    top = getattr(slo, name)
    thr = np.full(len(prio), np.inf if top is None else top, dtype=float)
    for c, t in slo.classes.items():
        if getattr(t, name) is not None:
            thr[prio == c] = getattr(t, name)
    return thr


def slo_met(done: pd.DataFrame, slo) -> np.ndarray:
    """Boolean per row of ``done`` (completed requests): met every target of its class."""
    prio = done["priority"].to_numpy()
    met = np.ones(len(done), dtype=bool)
    for name in _METRICS:
        thr = _thresholds(slo, prio, name)
        x = done[name].to_numpy(dtype=float)
        ok = np.isinf(thr) | (x <= thr)
        if name == "tpot_s":
            ok |= np.isnan(x)
        met &= ok
    return met


def _p50_p99(x: np.ndarray) -> dict:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(x, (50, 99))
    return {"p50": float(p50), "p99": float(p99)}


def slo_by_class(requests: pd.DataFrame, done: pd.DataFrame, met: np.ndarray, slo,
                 duration_s: float) -> dict:
    """``{"<class>": {...}}`` for every class configured in ``slo.classes`` or seen in the
    requests: num_requests (submitted), num_completed, goodput_requests_per_s,
    slo_attainment_frac (of its completed requests), ttft_s / tpot_s {p50, p99} of its
    completed requests, and the targets it was judged against (None = no target)."""
    num = requests["priority"].value_counts()
    prio = done["priority"].to_numpy()
    out = {}
    for c in sorted({int(c) for c in num.index} | set(slo.classes)):
        m = prio == c
        t = slo.targets_for(c)
        out[str(c)] = {
            "num_requests": int(num.get(c, 0)),
            "num_completed": int(m.sum()),
            "goodput_requests_per_s": float(met[m].sum()) / duration_s,
            "slo_attainment_frac": float(met[m].mean()) if m.any() else 0.0,
            "ttft_s": _p50_p99(done["ttft_s"].to_numpy(dtype=float)[m]),
            "tpot_s": _p50_p99(done["tpot_s"].to_numpy(dtype=float)[m]),
            "targets": {n: getattr(t, n) for n in _METRICS},
        }
    return out
