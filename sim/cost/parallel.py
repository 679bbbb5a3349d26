"""Step time of a ``tp x pp`` replica: per-GPU compute of the sharded model plus the
collectives and transfers of its split.

Models, as vLLM runs a Llama/Qwen2 model (Megatron-style TP, layer-wise PP):
- Per-GPU compute: ``RooflineCost`` of the TP rank's shard (``sim.parallel.shard_model``)
  with each stage's layers; the first stage also runs the embedding gather, the last the
  final norm, the LM head over ``vocab / tp`` columns and sampling over the gathered
  full-vocabulary logits.
- TP communication per stage, in the activation dtype: two all-reduces of [step tokens,
  hidden] per layer (RowParallelLinear with ``reduce_results=True`` after the attention
  output projection ``o_proj`` and the MLP ``down_proj``, vllm/model_executor/layers/linear.py),
  one all-reduce of [step tokens, hidden] after the vocab-parallel embedding
  (VocabParallelEmbedding.forward: ``tensor_model_parallel_all_reduce(output_parallel)``),
  and on the last stage the logits gather: vLLM v1 all-gathers [sampled, padded vocab]
  onto every rank (LogitsProcessor._gather_logits, ``tensor_model_parallel_all_gather`` when
  ``current_platform.use_all_gather()``, True on CUDA with V1; both in
  vllm/model_executor/layers/logits_processor.py and vllm/platforms/interface.py).
- PP transfer between stages: vLLM's Llama sends ``IntermediateTensors({"hidden_states",
  "residual"})``, [tokens, hidden] each (vllm/model_executor/models/llama.py); with TP each
  rank sends a 1/tp slice of each tensor and the next stage all-gathers it
  (GroupCoordinator.send_tensor_dict / recv_tensor_dict with ``all_gather_group=get_tp_group()``,
  vllm/distributed/parallel_state.py and vllm/v1/worker/gpu_worker.py).
- Collective times come from a communication model with the API of ``sim.cost.comm.CommModel``
  (``all_reduce_s(nbytes, n)``, ``all_gather_s(nbytes_out_per_rank, n)``, ``send_recv_s(nbytes)``),
  injected so tests can use an exact one.

A step's total is ``gemm + attn + (other + comm) + host``, in that order, both in
``step_time`` and as the engine adds the parts of ``decode_step_fn`` (its ``other`` being
``other_s + comm_s``), so stepping and fast-forward agree bit for bit. With pp > 1,
``step_time`` is one micro-batch's latency through the pipe (every stage in turn plus pp - 1
transfers); ``stage_times`` and ``p2p_s`` let a pipelined replica overlap micro-batches.

Ignores: overlap of communication with compute, sequence parallelism, custom all-reduce
versus NCCL choice (the comm model's business), the all-gather of a tensor whose size tp does
not divide (sent whole instead), and CUDA-graph savings per stage (``model`` is the TP shard
with all the replica's layers, so ``CudaGraphCost`` counts the launches ``step_time`` sums).
"""
from __future__ import annotations

from sim.cost.base import BatchShape, StepTime
from sim.cost.roofline import RooflineCost
from sim.hardware import HardwareProfile
from sim.model_spec import ModelSpec
from sim.parallel import padded_vocab, shard_model, stage_layers

_CACHE_LIMIT = 65536


def _step(gemm: float, attn: float, other: float, comm: float, host: float) -> StepTime:
    """A StepTime whose total adds the parts in the one order both pricing paths use."""
    return StepTime(total_s=gemm + attn + (other + comm) + host, gemm_s=gemm, attn_s=attn,
                    other_s=other, comm_s=comm, host_s=host)


class ParallelCost:
    """Step time of ``model`` on a replica of ``tp x pp`` GPUs of type ``hw``.

    ``hw``, ``model`` (the TP shard with all layers) and ``backend`` are per GPU, as
    ``CudaGraphCost`` reads them; ``stages`` are the per-stage ``RooflineCost`` models."""

    def __init__(self, model: ModelSpec, hw: HardwareProfile, tp: int = 1, pp: int = 1,
                 host_overhead_s: float = 0.0, backend: str | None = None, comm=None,
                 dtype: str | None = None):
        self.full_model = model
        self.tp, self.pp = int(tp), int(pp)
        self.hw = hw
        self.stage_layers = stage_layers(model.num_layers, self.pp)
        self.model = shard_model(model, self.tp)
        self.host_overhead_s = float(host_overhead_s)
        # host work (schedule, prepare inputs, sampling bookkeeping) once per step, before stage 0
        self.stages = [RooflineCost(shard_model(model, self.tp, n), hw, self.host_overhead_s if i == 0 else 0.0,
                                    backend, dtype, embed=i == 0, head=i == self.pp - 1,
                                    sample_vocab=model.vocab_size)
                       for i, n in enumerate(self.stage_layers)]
        self.backend = self.stages[0].backend
        self.dtype = self.stages[0].dtype
        if comm is None:
            from sim.cost.comm import CommModel  # written alongside; imported only when needed
            comm = CommModel(hw)
        self.comm = comm
        # activations travel in the compute dtype; quantized weights still run bf16 activations
        self.act_bytes = 4 if self.dtype in ("fp32", "float32") else 2
        self._vocab_padded = padded_vocab(model.vocab_size)
        self._comm_cache: dict[tuple[int, int], tuple[float, ...]] = {}
        self._p2p_cache: dict[int, float] = {}
        self._dec_steps: dict = {}

    @property
    def uses_decode_context_max(self) -> bool:
        return any(st.uses_decode_context_max for st in self.stages)

    # -- communication -------------------------------------------------------------------
    def stage_comm_s(self, tokens: int, sampled: int) -> tuple[float, ...]:
        """TP communication seconds of each stage for a step of ``tokens`` tokens, ``sampled``
        of them sampled: (2 x layers + [first stage] 1) all-reduces of [tokens, hidden], and on
        the last stage the all-gather of [sampled, padded vocab] logits."""
        key = (tokens, sampled)
        hit = self._comm_cache.get(key)
        if hit is not None:
            return hit
        pp, tp = self.pp, self.tp
        if tp == 1:
            out = (0.0,) * pp
        else:
            b, h = self.act_bytes, self.model.hidden_size
            ar = self.comm.all_reduce_s(tokens * h * b, tp) if tokens else 0.0
            ag = self.comm.all_gather_s(sampled * self._vocab_padded * b, tp) if sampled else 0.0
            out = tuple((2 * n + (1 if i == 0 else 0)) * ar + (ag if i == pp - 1 else 0.0)
                        for i, n in enumerate(self.stage_layers))
        if len(self._comm_cache) < _CACHE_LIMIT:
            self._comm_cache[key] = out
        return out

    def p2p_s(self, shape: BatchShape) -> float:
        """Seconds to move one step's activations across one stage boundary: hidden_states and
        residual, [tokens, hidden] each, sent one after the other; with TP each rank sends a
        1/tp slice and the receiving stage all-gathers it. 0.0 with one stage."""
        return self._p2p(shape.num_tokens)

    def _p2p(self, tokens: int) -> float:
        if self.pp == 1 or tokens == 0:
            return 0.0
        hit = self._p2p_cache.get(tokens)
        if hit is not None:
            return hit
        nbytes = tokens * self.model.hidden_size * self.act_bytes  # one of the two tensors
        tp, comm = self.tp, self.comm
        if tp > 1 and (tokens * self.model.hidden_size) % tp == 0:
            one = comm.send_recv_s(nbytes // tp) + comm.all_gather_s(nbytes, tp)
        else:
            one = comm.send_recv_s(nbytes)
        out = 2 * one
        if len(self._p2p_cache) < _CACHE_LIMIT:
            self._p2p_cache[tokens] = out
        return out

    # -- step prices ---------------------------------------------------------------------
    def stage_times(self, shape: BatchShape) -> list[StepTime]:
        """One StepTime per stage (its GPU work, its TP communication; the host time on the
        first stage), each total ``gemm + attn + (other + comm) + host``."""
        comm = self.stage_comm_s(shape.num_tokens, shape.num_sampled)
        out = []
        for cost, c in zip(self.stages, comm):
            st = cost.step_time(shape)
            out.append(_step(st.gemm_s, st.attn_s, st.other_s, c, st.host_s))
        return out

    def step_time(self, shape: BatchShape) -> StepTime:
        """The step's StepTime; with pp > 1 one micro-batch's latency through the pipe: each part
        summed over the stages (in stage order), the pp - 1 transfers added to ``comm_s``."""
        if self.pp == 1:
            st = self.stages[0].step_time(shape)
            c = self.stage_comm_s(shape.num_tokens, shape.num_sampled)[0]
            return _step(st.gemm_s, st.attn_s, st.other_s, c, st.host_s)
        gemm = attn = other = comm = 0.0
        for st in self.stage_times(shape):
            gemm += st.gemm_s
            attn += st.attn_s
            other += st.other_s
            comm += st.comm_s
        comm += (self.pp - 1) * self.p2p_s(shape)
        return _step(gemm, attn, other, comm, self.host_overhead_s)

    def decode_step_fn(self, n: int):
        """(attention seconds as a function of the context sum, the fixed parts as a StepTime
        with ``comm_s``) of a pure-decode step of ``n`` requests. The engine totals a step as
        ``gemm_s + attn + (other_s + comm_s) + host_s``, which is ``step_time``'s total bit for
        bit. With pp = 1 the function is the stage's own (with its ``run`` fast path)."""
        hit = self._dec_steps.get(n)
        if hit is not None:
            return hit
        comm = self.stage_comm_s(n, n)
        if self.pp == 1:
            f, fx = self.stages[0].decode_step_fn(n)
            out = f, StepTime(total_s=0.0, gemm_s=fx.gemm_s, other_s=fx.other_s, comm_s=comm[0], host_s=fx.host_s)
        else:
            parts = [cost.decode_step_fn(n) for cost in self.stages]
            fns = [f for f, _ in parts]

            def f(context_sum: int, context_max: int = 0) -> float:
                a = 0.0
                for g in fns:
                    a += g(context_sum, context_max)
                return a
            gemm = other = c = 0.0
            for (_, fx), ci in zip(parts, comm):
                gemm += fx.gemm_s
                other += fx.other_s
                c += ci
            c += (self.pp - 1) * self._p2p(n)
            out = f, StepTime(total_s=0.0, gemm_s=gemm, other_s=other, comm_s=c, host_s=self.host_overhead_s)
        self._dec_steps[n] = out
        return out


def build_parallel_cost(model: ModelSpec, hw: HardwareProfile, tp: int, pp: int, host_overhead_s: float,
                        backend: str | None = None, comm=None):
    """The cost model of a ``tp x pp`` replica: today's ``RooflineCost`` itself for one GPU
    (so tp = pp = 1 is unchanged), else a ``ParallelCost``."""
    if tp == 1 and pp == 1:
        return RooflineCost(model, hw, host_overhead_s=host_overhead_s, backend=backend)
    return ParallelCost(model, hw, tp, pp, host_overhead_s=host_overhead_s, backend=backend, comm=comm)
