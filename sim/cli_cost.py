"""``servesim cost``: predicted times of one GPU op, one collective, or one engine step.

Commands: ``gemm``, ``attention-prefill``, ``attention-decode``, ``elementwise`` (one op on a
profile's efficiency curves), ``all-reduce``, ``all-gather``, ``reduce-scatter``, ``send-recv``
(the communication model), ``step`` (a whole engine step with its breakdown). Each prints
``time_s`` as a plain float, or a JSON object with ``--json``. Thin wrappers over the library;
every input problem is a one-line error and exit code 2.
"""
from __future__ import annotations

import json
from typing import Optional

import typer

from sim.cli_common import fail, guard
from sim.config import ConfigError

app = typer.Typer(no_args_is_help=True, help="Predict the time of one GPU op or engine step (seconds).")
cost_app = app
_fail = fail
_guard = guard()


def _print_op(hw_name: str, op, backend: Optional[str], json_: bool) -> None:
    from sim.cost.ops import op_time_breakdown
    from sim.hardware import load_hardware

    hw = load_hardware(hw_name)
    b = op_time_breakdown(hw, op, backend)
    if json_:
        typer.echo(json.dumps({**b, "hardware": hw.name, "shape": {k: v for k, v in vars(op).items()}}, indent=2))
    else:
        typer.echo(f"{b['time_s']:.6e}")


_HW = typer.Option(..., "--hardware", help="profile name or path")
_BE = typer.Option(None, "--backend", help="vendor | triton (default: the profile's)")
_JS = typer.Option(False, "--json", help="print a JSON object whose time_s is the prediction")


@cost_app.command("gemm")
@_guard
def cost_gemm(hardware: str = _HW, m: int = typer.Option(..., "--m"), n: int = typer.Option(..., "--n"),
              k: int = typer.Option(..., "--k"), dtype: str = typer.Option("bf16", "--dtype"),
              backend: Optional[str] = _BE, json_: bool = _JS):
    """C[m,n] = A[m,k] @ B[k,n]."""
    from sim.cost.ops import Gemm
    _print_op(hardware, Gemm(m, n, k, dtype), backend, json_)


@cost_app.command("attention-prefill")
@_guard
def cost_attn_prefill(hardware: str = _HW, batch: int = typer.Option(1, "--batch"),
                      seq: int = typer.Option(..., "--seq", help="new (query) tokens per sequence"),
                      context: Optional[int] = typer.Option(None, "--context", help="total keys incl. new tokens (default: --seq)"),
                      heads: int = typer.Option(..., "--heads"), kv_heads: int = typer.Option(..., "--kv-heads"),
                      head_dim: int = typer.Option(128, "--head-dim"), backend: Optional[str] = _BE, json_: bool = _JS):
    """Causal prefill attention (GQA) of --seq new tokens per sequence."""
    from sim.cost.ops import AttnPrefill
    _print_op(hardware, AttnPrefill(batch, seq, context or seq, heads, kv_heads, head_dim), backend, json_)


@cost_app.command("attention-decode")
@_guard
def cost_attn_decode(hardware: str = _HW, batch: int = typer.Option(..., "--batch"),
                     context: int = typer.Option(..., "--context"), heads: int = typer.Option(..., "--heads"),
                     kv_heads: int = typer.Option(..., "--kv-heads"), head_dim: int = typer.Option(128, "--head-dim"),
                     backend: Optional[str] = _BE, json_: bool = _JS):
    """Paged decode attention: one query per sequence over --context cached tokens."""
    from sim.cost.ops import AttnDecode
    _print_op(hardware, AttnDecode(batch, context, heads, kv_heads, head_dim), backend, json_)


@cost_app.command("elementwise")
@_guard
def cost_elementwise(hardware: str = _HW, op: str = typer.Option(..., "--op", help="rmsnorm|silu_mul|rotary|add|copy"),
                     tokens: int = typer.Option(..., "--tokens"), hidden: int = typer.Option(..., "--hidden"),
                     backend: Optional[str] = _BE, json_: bool = _JS):
    """A memory-bound op over a [tokens, hidden] activation."""
    from sim.cost.ops import _ELEMENTWISE, Elementwise
    if op not in _ELEMENTWISE:
        _fail(f"--op: expected one of {sorted(_ELEMENTWISE)}, got '{op}'")
    _print_op(hardware, Elementwise(op, tokens, hidden), backend, json_)


# -- communication (sim.cost.comm): NCCL collectives inside one node ------------------------------
_GPUS = typer.Option(..., "--gpus", help="GPUs taking part (1 .. the link's max_gpus_per_node)")


def _print_comm(hw_name: str, op: str, nbytes: float, gpus: int, json_: bool) -> None:
    from sim.cost.comm import CommModel
    from sim.hardware import load_hardware

    if gpus < 1:
        _fail(f"--gpus: expected an integer >= 1, got {gpus}")
    if not nbytes >= 0:
        _fail(f"--bytes: expected a number >= 0, got {nbytes:g}")
    b = CommModel(load_hardware(hw_name)).breakdown(op, nbytes, gpus)
    typer.echo(json.dumps(b, indent=2) if json_ else f"{b['time_s']:.6e}")


@cost_app.command("all-reduce")
@_guard
def cost_all_reduce(hardware: str = _HW, gpus: int = _GPUS,
                    bytes_: float = typer.Option(..., "--bytes", help="tensor size per rank"), json_: bool = _JS):
    """NCCL all-reduce of --bytes per rank over --gpus GPUs of one node."""
    _print_comm(hardware, "all_reduce", bytes_, gpus, json_)


@cost_app.command("all-gather")
@_guard
def cost_all_gather(hardware: str = _HW, gpus: int = _GPUS,
                    bytes_: float = typer.Option(..., "--bytes", help="gathered OUTPUT size per rank"),
                    json_: bool = _JS):
    """NCCL all-gather whose gathered output is --bytes per rank."""
    _print_comm(hardware, "all_gather", bytes_, gpus, json_)


@cost_app.command("reduce-scatter")
@_guard
def cost_reduce_scatter(hardware: str = _HW, gpus: int = _GPUS,
                        bytes_: float = typer.Option(..., "--bytes", help="INPUT size per rank"), json_: bool = _JS):
    """NCCL reduce-scatter whose input is --bytes per rank."""
    _print_comm(hardware, "reduce_scatter", bytes_, gpus, json_)


@cost_app.command("send-recv")
@_guard
def cost_send_recv(hardware: str = _HW, bytes_: float = typer.Option(..., "--bytes", help="bytes transferred"),
                   json_: bool = _JS):
    """One NCCL send/recv of --bytes between two GPUs of one node."""
    _print_comm(hardware, "send_recv", bytes_, 2, json_)


# -- one engine step (sim.cost.roofline / parallel, sim.engine.cuda_graphs) ---------------------
def _engine_default(name: str):
    from dataclasses import fields

    from sim.config import EngineConfig
    return next(f.default for f in fields(EngineConfig) if f.name == name)


def _step_shape(prefill: str, decode_batch: Optional[int], decode_context: Optional[str]):
    """(chunks, contexts, canonical decode text) from the options; one-line errors."""
    from sim.cost.step_shape import parse_decode, parse_prefill

    try:
        chunks = parse_prefill(prefill)
    except ValueError as e:
        _fail(f"--prefill: {e}")
    if decode_batch is not None and decode_batch < 1:
        _fail(f"--decode-batch: expected an integer >= 1, got {decode_batch}")
    ctx = (decode_context or "").strip()
    if not ctx:
        if decode_batch is not None:
            _fail("--decode-batch needs --decode-context (the context of each sequence, e.g. 1024)")
        decode = ""
    elif ctx.isdigit():
        if decode_batch is None:
            _fail(f"--decode-context {ctx} needs --decode-batch, or write COUNT@CTX (e.g. 64@{ctx})")
        decode = f"{decode_batch}@{ctx}"
    else:
        decode = ctx
    try:
        contexts = parse_decode(decode)
    except ValueError as e:
        _fail(f"--decode-context: {e}")
    if decode_batch is not None and len(contexts) != decode_batch:
        _fail(f"--decode-batch {decode_batch} disagrees with --decode-context {ctx} ({len(contexts)} sequences)")
    if not chunks and not contexts:
        _fail("empty step: give --prefill and/or --decode-batch with --decode-context")
    return chunks, contexts, decode


@cost_app.command("step")
@_guard
def cost_step(model: str = typer.Option(..., "--model", help="model name or HF config.json"),
              hardware: str = _HW,
              prefill: str = typer.Option("", "--prefill", help="prefill chunks NEW[+PRIOR]xCOUNT, comma-separated "
                                          "(e.g. 2048x1,512x4 or 512+1536x1)"),
              decode_batch: Optional[int] = typer.Option(None, "--decode-batch", help="decode sequences"),
              decode_context: Optional[str] = typer.Option(
                  None, "--decode-context", help="keys each decode sequence attends to, its new token included: "
                  "CTX with --decode-batch, or COUNT@CTX / COUNT@LO:HI groups, comma-separated"),
              sampled: Optional[int] = typer.Option(None, "--sampled", help="sampled tokens (default: one per "
                                                    "prefill chunk and per decode sequence)"),
              tp: int = typer.Option(1, "--tp", help="tensor-parallel GPUs"),
              pp: int = typer.Option(1, "--pp", help="pipeline stages (time of one micro-batch through the pipe)"),
              backend: Optional[str] = _BE,
              cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="price as the engine does with CUDA "
                                               "graphs: decode-only steps padded to a captured size, cheap launches"),
              graph_launch_s: Optional[float] = typer.Option(
                  None, "--graph-launch-s", help="per-kernel launch inside a graph (default: engine.cuda_graph_launch_s)"),
              host_overhead_s: Optional[float] = typer.Option(
                  None, "--host-overhead-s", help="CPU time per step (default: engine.host_overhead_s; 0 = GPU only)"),
              interval: bool = typer.Option(False, "--interval", help="add the 80 % prediction interval (p10-p90) "
                                            "from the profile's held-out residuals (calibrated profiles only)"),
              json_: bool = _JS):
    """Predicted time of one engine step, with its breakdown by op kind."""
    from sim.cost.parallel import build_parallel_cost
    from sim.cost.step_shape import batch_shape, format_prefill
    from sim.engine.cuda_graphs import CudaGraphCost
    from sim.hardware import load_hardware
    from sim.model_spec import load_model
    from sim.parallel import stage_layers, tp_problem

    chunks, contexts, decode = _step_shape(prefill, decode_batch, decode_context)
    if sampled is not None and not 0 <= sampled <= len(chunks) + len(contexts):
        _fail(f"--sampled: expected 0 .. {len(chunks) + len(contexts)} (the step's chunks and decode sequences), "
              f"got {sampled}")
    host = _engine_default("host_overhead_s") if host_overhead_s is None else host_overhead_s
    glaunch = _engine_default("cuda_graph_launch_s") if graph_launch_s is None else graph_launch_s
    for name, v in (("--host-overhead-s", host), ("--graph-launch-s", glaunch)):
        if not v >= 0:
            _fail(f"{name}: expected seconds >= 0, got {v:g}")
    spec, hw = load_model(model), load_hardware(hardware)
    problem = tp_problem(spec, tp)
    if problem:
        _fail(f"--tp: {problem}")
    try:
        stage_layers(spec.num_layers, pp)
    except ConfigError as e:
        _fail(f"--pp: {e.message}")
    cost = build_parallel_cost(spec, hw, tp, pp, host, backend)
    shape = batch_shape(chunks, contexts, sampled)
    padded = None
    if cuda_graphs:
        cost = CudaGraphCost(cost, _engine_default("cuda_graph_max_batch_size"), glaunch)
        if contexts and not chunks:
            padded = cost.padded(len(contexts))
    st = cost.step_time(shape)
    ival = None
    if interval:
        from sim.cost.uncertainty import step_interval
        ival = step_interval(hw, st, shape, getattr(cost, "inner", cost), backend)
    if not json_:
        typer.echo(f"{st.total_s:.6e}")
        if interval:
            typer.echo(f"p10-p90 {ival[0]:.6e} .. {ival[1]:.6e}" if ival is not None else
                       f"no interval: profile '{hw.name}' has no calibration.uncertainty (uncalibrated)")
        return
    typer.echo(json.dumps({
        "time_s": st.total_s, "gemm_s": st.gemm_s, "attn_s": st.attn_s, "other_s": st.other_s,
        "comm_s": st.comm_s, "host_s": st.host_s, "model": spec.name, "hardware": hw.name, "tp": tp, "pp": pp,
        "backend": backend or hw.default_backend, "cuda_graphs": cuda_graphs,
        "graph_launch_s": glaunch if cuda_graphs else None, "padded_decode_batch": padded,
        "shape": {"prefill": format_prefill(chunks), "decode": decode, "num_prefill_chunks": len(chunks),
                  "num_prefill_tokens": shape.num_prefill_tokens, "num_decode": shape.num_decode,
                  "decode_context_sum": shape.decode_context_sum, "num_sampled": shape.num_sampled,
                  "num_tokens": shape.num_tokens},
        **({"interval_s": None if ival is None else list(ival)} if interval else {})}, indent=2))
