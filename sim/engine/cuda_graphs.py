"""CUDA-graph execution of decode steps: padding to captured batch sizes, cheaper launches.

Models: vLLM's CUDA-graph mode (``enforce_eager=False``, the default). Graphs are captured
for decode batch sizes ``[1, 2, 4] + [8, 16, 24, ..., max]`` (vLLM's
``cudagraph_capture_sizes``; ``max`` = ``engine.cuda_graph_max_batch_size``, 512 in v1).
A decode-only step whose batch fits a captured size replays the graph of the next size up:
the padded rows are computed (GEMMs over the padded token count; each padded row attends
to one dummy token) but not sampled, and every kernel costs ``cuda_graph_launch_s``
instead of its eager launch cost. Steps with prefill chunks, or larger than the largest
captured size, run eagerly and pay the full launch cost per kernel; so do all steps
without ``engine.cuda_graphs``. With a small model and batch, where launches and host work
dominate, this is the difference between eager and graph mode.

The saved launch time is counted from the roofline model's kernel inventory (per layer:
4 GEMMs, 6 elementwise kernels, one decode attention; per step: embedding, final norm,
LM head, sampling), at the hardware profile's per-kind ``launch_s``; a cost model without
that inventory (e.g. ``constant``) gets the padding only.

Ignores: vLLM v1's piecewise graphs for mixed batches (attention outside the graph), graph
capture time and memory, the host-side per-step overhead (unchanged by graphs).
"""
from __future__ import annotations

import bisect

from sim.cost.base import BatchShape, StepTime


def capture_sizes(max_batch_size: int) -> list[int]:
    """vLLM's captured decode batch sizes up to ``max_batch_size``."""
    sizes = [s for s in (1, 2, 4) if s <= max_batch_size]
    sizes += list(range(8, max_batch_size + 1, 8))
    if sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return sizes


class CudaGraphCost:
    """Wraps a cost model: decode-only steps are padded and launched from a graph."""

    def __init__(self, inner, max_batch_size: int = 512, graph_launch_s: float = 1.0e-6):
        self.inner = inner
        self.sizes = capture_sizes(max_batch_size)
        self.graph_launch_s = graph_launch_s
        hw, model = getattr(inner, "hw", None), getattr(inner, "model", None)
        self._launch = None
        if hw is not None and model is not None and hasattr(inner, "backend"):
            eff = {k: hw.op_efficiency(k, inner.backend).launch_s for k in ("gemm", "elementwise", "attn_decode")}
            save = {k: max(0.0, v - graph_launch_s) for k, v in eff.items()}
            L = model.num_layers
            # (gemm, attention, other) seconds saved per decode-only step (sampled rows > 0)
            self._launch = ((4 * L + 1) * save["gemm"], L * save["attn_decode"], (6 * L + 3) * save["elementwise"])

    @property
    def uses_decode_context_max(self) -> bool:
        return bool(getattr(self.inner, "uses_decode_context_max", False))

    def padded(self, n: int) -> int | None:
        """The captured size a decode batch of ``n`` replays, or None (too large: eager)."""
        i = bisect.bisect_left(self.sizes, n)
        return self.sizes[i] if i < len(self.sizes) else None

    def step_time(self, shape: BatchShape) -> StepTime:
        n = shape.num_decode
        size = self.padded(n) if n and not shape.prefill_chunks else None
        if size is None:
            return self.inner.step_time(shape)
        pad = size - n
        st = self.inner.step_time(BatchShape([], size, shape.decode_context_sum + pad, shape.num_sampled,
                                             shape.decode_context_max))
        if self._launch is None:
            return st
        g, a, o = self._launch
        gemm, attn, other = st.gemm_s - g, st.attn_s - a, st.other_s - o
        return StepTime(total_s=gemm + attn + other + st.comm_s + st.host_s, gemm_s=gemm, attn_s=attn,
                        other_s=other, comm_s=st.comm_s, host_s=st.host_s)
