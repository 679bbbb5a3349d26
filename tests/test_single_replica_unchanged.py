"""A single-replica config gives the same frames as before clusters existed.

tests/golden/frames_f588575.json holds sha256 digests of the request and iteration frames of
five single-replica scenarios (default, vLLM v0 with swap under memory pressure, Sarathi-Serve
with CUDA graphs, static batching, a closed loop; 300 requests each on the calibrated H100
profile) computed with commit f588575, the last commit before the cluster work, over every
column that commit had. The columns added since (requests: ``pool``; iterations:
``bubble_s``) are left out. Regenerating the file means the single-replica results changed:
say why in the commit.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import sim
from tests.conftest import ROOT

GOLDEN = json.loads((ROOT / "tests" / "golden" / "frames_f588575.json").read_text())


def _digest(df, cols) -> str:
    h = hashlib.sha256()
    for c in cols:
        a = df[c].to_numpy()
        a = np.where(np.isnan(a), -1.0, a) if a.dtype.kind == "f" else a
        h.update(c.encode())
        h.update(np.ascontiguousarray(a.astype(np.float64 if a.dtype.kind == "f" else np.int64)).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_single_replica_frames_bit_identical_to_before_clusters(name):
    g = GOLDEN[name]
    res = sim.run(ROOT / "workloads" / "default.yaml", workload__num_requests=300, **g["overrides"])
    assert [len(res.requests), len(res.iterations)] == g["rows"]
    assert _digest(res.requests, g["request_columns"]) == g["requests"]
    assert _digest(res.iterations, g["iteration_columns"]) == g["iterations"]
