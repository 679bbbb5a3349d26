"""Cost-noise replicates: a pool's cost model with its op kinds scaled by one draw of the
profile's residuals (``sim.replicates``; ``SimConfig.cost_noise_replicate``).

Models: the question "how much would this run's results move if the real GPU's kernels were off
from our prices by as much as the held-out measurements are": replicate r multiplies every
step's GEMM seconds by one factor, its prefill and decode attention by one each, its other
(elementwise) seconds by one, and its GPU part by the step-level factor of the step's phase
(``sim.cost.uncertainty``: the same factor for the whole run, so errors are correlated across
steps as they are across layers). The factors of replicate r are drawn from the named stream
``cost.noise/<r>/<profile>/<backend>`` of the run's seed (``sim.rng``), so pools on the same
profile and backend share them (the same kernels are off by the same ratio), a pool on other
hardware draws its own, and adding a pool shifts no other pool's draw. Host and communication
seconds are not scaled (see ``sim.cost.uncertainty``). Everything priced from the pool's cost
model sees the scaled prices: the engine's steps, Sarathi-Serve's token budget and the router
weights (``sim.cluster.build``: a pool's capacity), as they would on the real GPU.

Stepping and fast-forward stay identical: ``step_time`` adds the scaled parts as
``gemm + attn + (other + comm) + host``, the order the engine adds the fixed parts of
``decode_step_fn``, whose attention price is the wrapped one times the same factor. The
wrapped price's ``run`` fast path is not offered (the engine then prices a run step by step,
with the same arithmetic).

Ignores: a cost model without op kinds (``constant``: the noise needs the roofline's parts).
"""
from __future__ import annotations

from sim.cost.base import BatchShape, StepTime
from sim.cost.uncertainty import PHASES, CostFactors, decode_attention_s, draw_factors, profile_uncertainty, step_phase
from sim.rng import RngStreams


def stream_name(replicate: int, hardware: str, backend: str) -> str:
    """The RNG stream of one replicate's factors for one profile and backend."""
    return f"cost.noise/{int(replicate)}/{hardware}/{backend}"


def replicate_factors(hw, backend: str, seed: int, replicate: int) -> CostFactors | None:
    """Replicate ``replicate``'s factors for ``hw`` on ``backend`` under ``seed`` (None: the
    profile has no uncertainty section for that backend)."""
    unc = profile_uncertainty(hw, backend)
    if unc is None:
        return None
    return draw_factors(unc, RngStreams(seed).stream(stream_name(replicate, hw.name, backend)))


class NoisyCost:
    """``inner`` (a ``RooflineCost`` or ``ParallelCost``) with its parts scaled by ``factors``.
    Attributes other than the pricing methods (hw, model, backend, tp, pp, stages, ...) read
    through to ``inner``, so ``CudaGraphCost`` and pipeline replicas wrap it as they wrap
    ``inner``."""

    def __init__(self, inner, factors: CostFactors):
        self.inner = inner
        self.factors = factors
        f = factors
        # per phase: (gemm, prefill attention, decode attention, other) multipliers
        self._k = {ph: (f.gemm * f.step(ph), f.attn_prefill * f.step(ph), f.attn_decode * f.step(ph),
                        f.elementwise * f.step(ph)) for ph in PHASES}
        if hasattr(inner, "decode_step_fn"):
            self.decode_step_fn = self._decode_step_fn
            self._dec_steps: dict = {}
        if hasattr(inner, "stage_times"):
            self.stage_times = self._stage_times

    def __getattr__(self, name):
        if name == "inner":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _scale(self, st: StepTime, shape: BatchShape, decode_attn_s) -> StepTime:
        """``st`` (the price of ``shape``) scaled; ``decode_attn_s()``: its decode attention
        seconds, asked for only for a mixed step."""
        phase = step_phase(shape)
        kg, kp, kd, ko = self._k[phase]
        if phase == "mixed":
            dec = decode_attn_s()
            attn = (st.attn_s - dec) * kp + dec * kd
        else:
            attn = st.attn_s * (kp if phase == "prefill" else kd)
        gemm, other, comm = st.gemm_s * kg, st.other_s * ko, st.comm_s
        return StepTime(total_s=gemm + attn + (other + comm) + st.host_s, gemm_s=gemm, attn_s=attn,
                        other_s=other, comm_s=comm, host_s=st.host_s)

    def step_time(self, shape: BatchShape) -> StepTime:
        return self._scale(self.inner.step_time(shape), shape, lambda: decode_attention_s(self.inner, shape))

    def _stage_times(self, shape: BatchShape) -> list[StepTime]:
        """Each pipeline stage's StepTime scaled as ``step_time`` scales the step."""
        stages = self.inner.stage_times(shape)
        dec = None
        if step_phase(shape) == "mixed":
            dec = self.inner.stage_times(BatchShape([], shape.num_decode, shape.decode_context_sum, 0,
                                                    shape.decode_context_max))
        return [self._scale(st, shape, lambda i=i: dec[i].attn_s) for i, st in enumerate(stages)]

    def _decode_step_fn(self, n: int):
        """``inner.decode_step_fn(n)`` scaled: the attention price times the decode multiplier,
        the fixed GEMM and other seconds times theirs (the same products ``step_time`` forms)."""
        hit = self._dec_steps.get(n)
        if hit is not None:
            return hit
        f, fx = self.inner.decode_step_fn(n)
        kg, _, kd, ko = self._k["decode"]

        def price(context_sum: int, context_max: int = 0) -> float:
            return (f(context_sum, context_max) if context_max else f(context_sum)) * kd
        out = price, StepTime(total_s=0.0, gemm_s=fx.gemm_s * kg, attn_s=0.0, other_s=fx.other_s * ko,
                              comm_s=fx.comm_s, host_s=fx.host_s)
        self._dec_steps[n] = out
        return out


def noisy_cost(cost, hw, seed: int, replicate: int):
    """``cost`` wrapped with replicate ``replicate``'s factors, or None if ``hw`` has no
    uncertainty section for the cost's backend."""
    fac = replicate_factors(hw, cost.backend, seed, replicate)
    return None if fac is None else NoisyCost(cost, fac)
