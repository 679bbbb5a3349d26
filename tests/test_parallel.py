"""Tensor/pipeline parallelism inside a replica: sharding (sim.parallel) and step cost
(sim.cost.parallel). Exact arithmetic and equality with the one-GPU code, not approximations."""
import dataclasses
import functools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import ConfigError
from sim.cost.base import BatchShape
from sim.cost.parallel import ParallelCost, build_parallel_cost
from sim.cost.roofline import RooflineCost
from sim.engine.cuda_graphs import CudaGraphCost
from sim.hardware import load_hardware
from sim.kv.manager import NON_TORCH_BYTES, activation_reserve_bytes, kv_capacity_blocks
from sim.model_spec import ModelSpec, load_model, shipped_models
from sim.parallel import (padded_vocab, plan_replica, shard_model, stage_activation_reserve_bytes,
                          stage_layers, stage_weight_bytes)

H100 = load_hardware("h100_sxm")
M8 = load_model("llama-3.1-8b")
M70 = load_model("llama-3.1-70b")
T, S = 8192, 256  # max_num_batched_tokens, max_num_seqs of the plans below
# a small GQA model (8 heads, 2 KV heads) whose vocabulary is not a multiple of 64
TOY = ModelSpec(name="toy", num_layers=6, hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64,
                intermediate_size=1536, vocab_size=32001)


class FakeComm:
    """Exact alpha-beta collectives (ring-style byte factors); records every call."""

    def __init__(self, alpha_s=5e-6, bw=4e11):
        self.alpha_s, self.bw, self.calls = alpha_s, bw, []

    def all_reduce_s(self, nbytes, n):
        self.calls.append(("all_reduce", nbytes, n))
        return 0.0 if n == 1 else self.alpha_s + 2 * (n - 1) / n * nbytes / self.bw

    def all_gather_s(self, nbytes, n):
        self.calls.append(("all_gather", nbytes, n))
        return 0.0 if n == 1 else self.alpha_s + (n - 1) / n * nbytes / self.bw

    def reduce_scatter_s(self, nbytes, n):
        self.calls.append(("reduce_scatter", nbytes, n))
        return 0.0 if n == 1 else self.alpha_s + (n - 1) / n * nbytes / self.bw

    def send_recv_s(self, nbytes):
        self.calls.append(("send_recv", nbytes, 2))
        return self.alpha_s + nbytes / self.bw


@functools.lru_cache(maxsize=None)
def _pcost(name: str, tp: int, pp: int) -> ParallelCost:
    return ParallelCost(load_model(name), H100, tp, pp, host_overhead_s=3e-3, comm=FakeComm())


# -- stages ----------------------------------------------------------------------------
def test_stage_layers_match_vllm_get_pp_indices():
    # vllm/distributed/utils.py get_pp_indices: n // pp each, remainder to partitions[-2], [-3], ...
    assert stage_layers(32, 3) == [11, 11, 10]
    assert stage_layers(80, 6) == [13, 13, 13, 14, 14, 13]
    assert stage_layers(80, 3) == [27, 27, 26]
    assert stage_layers(28, 8) == [3, 3, 3, 4, 4, 4, 4, 3]
    assert stage_layers(32, 4) == [8, 8, 8, 8] and stage_layers(32, 1) == [32]
    assert stage_layers(5, 5) == [1] * 5


@given(st.integers(1, 200), st.integers(1, 64))
def test_stage_layers_properties(n, pp):
    if pp > n:
        with pytest.raises(ConfigError) as e:
            stage_layers(n, pp)
        assert e.value.key == "parallelism.pp"
        return
    parts = stage_layers(n, pp)
    assert sum(parts) == n and len(parts) == pp
    assert parts[-1] == n // pp and max(parts) - min(parts) <= 1


def test_pp_beyond_layers_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        plan_replica(M8, H100, 1, 33, 16, 0.9, T, S)
    assert e.value.key == "parallelism.pp" and "32 layers" in str(e.value)


# -- sharding ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", shipped_models())
def test_shard_tp1_is_the_model(name):
    m = load_model(name)
    assert shard_model(m, 1) is m and shard_model(m, 1) == m
    assert shard_model(m, 1, num_layers=m.num_layers) == m


def test_tp_must_divide_heads_with_key_and_heads_named():
    with pytest.raises(ConfigError) as e:
        plan_replica(M70, H100, 3, 1, 16, 0.9, T, S)
    assert e.value.key == "parallelism.tp" and "64 attention heads" in str(e.value)
    # qwen2.5-7b: 28 heads, so vLLM cannot run it at tp=8 (nor can we)
    with pytest.raises(ConfigError, match="28 attention heads"):
        shard_model(load_model("qwen2.5-7b"), 8)
    with pytest.raises(ConfigError) as e:
        plan_replica(M70, H100, 5, 1, 16, 0.9, T, S, key_prefix="cluster.pools[1].parallelism")
    assert e.value.key == "cluster.pools[1].parallelism.tp"


def test_kv_heads_split_then_replicated():
    assert shard_model(TOY, 2).num_kv_heads == 1  # 2 KV heads over 2 GPUs
    assert shard_model(TOY, 4).num_kv_heads == 1 and shard_model(TOY, 8).num_kv_heads == 1  # replicated
    assert shard_model(TOY, 4).num_heads == 2
    # llama-3.1-8b: 8 KV heads; tp=16 holds one (replicated twice) per GPU
    s16 = shard_model(M8, 16)
    assert (s16.num_heads, s16.num_kv_heads, s16.intermediate_size) == (2, 1, 14336 // 16)
    assert s16.kv_bytes_per_token == 32 * 2 * 1 * 128 * 2
    assert shard_model(M8, 4).kv_bytes_per_token == M8.kv_bytes_per_token / 4


def test_vocab_padded_as_vllm_then_split():
    assert padded_vocab(32001) == 32064 and padded_vocab(128256) == 128256
    s = shard_model(TOY, 2)
    assert s.vocab_size == 32064 // 2
    assert stage_weight_bytes(s, True, True) == (6 * s.params_per_layer + 2 * 16032 * 512 + 512) * 2


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b"])
def test_tp2_halves_weights_up_to_replicated_norms(name):
    # the vocabularies are multiples of 128, so the padded vocabulary halves exactly; every
    # matrix and bias is split, the 2 norms per layer and the final norm are replicated:
    # W(tp=2) = (W(1) - norms) / 2 + norms, norms = (2 L + 1) hidden params
    m = load_model(name)
    norms = (2 * m.num_layers + 1) * m.hidden_size
    w2 = stage_weight_bytes(shard_model(m, 2), True, True)
    assert w2 == ((m.num_params - norms) // 2 + norms) * m.weight_bytes_per_param
    assert (m.num_params - norms) % 2 == 0


def test_tp2_kv_capacity_follows_the_arithmetic():
    one = plan_replica(M8, H100, 1, 1, 16, 0.9, T, S)
    two = plan_replica(M8, H100, 2, 1, 16, 0.9, T, S)
    m, h = M8, M8.hidden_size
    w2 = ((m.num_params - (2 * m.num_layers + 1) * h) // 2 + (2 * m.num_layers + 1) * h) * 2
    per_token = (3 * m.intermediate_size // 2 + 4 * h + m.q_size // 2 + 2 * m.kv_size // 2) * 2
    r2 = T * per_token + S * m.vocab_size * 4 * 2 + NON_TORCH_BYTES  # logits gathered: full vocab
    assert two.weight_bytes_per_gpu == w2 and two.activation_reserve_bytes_per_gpu == r2
    assert two.kv_bytes_per_token_per_gpu == m.kv_bytes_per_token / 2
    assert two.kv_blocks == int((H100.memory_bytes * 0.9 - w2 - r2) // (16 * m.kv_bytes_per_token / 2))
    assert two.kv_capacity_tokens == 16 * two.kv_blocks > 2 * one.kv_capacity_tokens
    assert two.num_gpus == 2 and two.stage_layers == (32,)


# -- tp = pp = 1 is today's arithmetic --------------------------------------------------------
@pytest.mark.parametrize("hw_name", ["h100_sxm", "h200_sxm", "a100_80gb_sxm", "l40s"])
@pytest.mark.parametrize("name", shipped_models())
def test_tp1_pp1_equals_kv_capacity_blocks(name, hw_name):
    m, hw = load_model(name), load_hardware(hw_name)
    for util, tokens, seqs, bs in ((0.9, 8192, 256, 16), (0.85, 2048, 32, 32), (0.95, 512, 8, 16)):
        reserve = activation_reserve_bytes(m, tokens, seqs)
        assert stage_activation_reserve_bytes(m, m, True, tokens, seqs) == reserve
        assert stage_weight_bytes(m, True, True) == m.weight_bytes
        try:
            want = kv_capacity_blocks(m, hw, bs, util, reserve)
        except ConfigError:
            with pytest.raises(ConfigError):
                plan_replica(m, hw, 1, 1, bs, util, tokens, seqs)
            continue
        got = plan_replica(m, hw, 1, 1, bs, util, tokens, seqs)
        assert got.kv_blocks == want and got.kv_capacity_tokens == want * bs
    for over in (0.0, 1.7e9, 3.1e9):  # an explicit engine.activation_reserve_bytes
        try:
            want = kv_capacity_blocks(m, hw, 16, 0.9, over)
        except ConfigError:
            continue
        assert plan_replica(m, hw, 1, 1, 16, 0.9, 1, 1, activation_reserve_bytes=over).kv_blocks == want


# -- pipeline stages' memory ------------------------------------------------------------------
def test_pp_stage_weights_untied_and_tied():
    lay = plan_replica(M8, H100, 1, 2, 16, 0.9, T, S)
    w0, w1 = lay.stage_weight_bytes
    emb = M8.vocab_size * M8.hidden_size
    assert w0 == (16 * M8.params_per_layer + emb) * 2
    assert w1 == (16 * M8.params_per_layer + emb + M8.hidden_size) * 2
    assert w0 + w1 == M8.weight_bytes  # untied: nothing is held twice
    q = load_model("qwen2.5-0.5b")  # tied embeddings: held on both ends (vLLM LlamaModel/Qwen2Model)
    t0, t1 = plan_replica(q, H100, 1, 2, 16, 0.9, T, S).stage_weight_bytes
    qe = q.vocab_size * q.hidden_size
    assert t0 == (12 * q.params_per_layer + qe) * 2 and t1 == (12 * q.params_per_layer + qe + q.hidden_size) * 2
    assert t0 + t1 == q.weight_bytes + qe * 2


def test_pp_kv_blocks_are_the_min_over_stages():
    lay = plan_replica(M8, H100, 2, 3, 16, 0.9, T, S)  # 11, 11, 10 layers
    assert lay.stage_layers == (11, 11, 10) and lay.num_gpus == 6
    blocks = []
    for i, n in enumerate(lay.stage_layers):
        sh = shard_model(M8, 2, n)
        last = i == 2
        r = stage_activation_reserve_bytes(M8, sh, last, T, S)
        logits = S * M8.vocab_size * 4 * 2 if last else 0  # fp32 logits on the last stage only
        assert r == T * (3 * 7168 + 4 * 4096 + 2048 + 2 * 512) * 2 + logits + NON_TORCH_BYTES
        w = stage_weight_bytes(sh, i == 0, last)
        blocks.append(int((H100.memory_bytes * 0.9 - w - r) // (16 * n * 2 * 4 * 128 * 2)))
    assert lay.kv_blocks == min(blocks) == blocks[0]


# -- not fitting ------------------------------------------------------------------------------
def test_70b_on_one_h100_names_pool_need_and_smallest_layout():
    with pytest.raises(ConfigError) as e:
        plan_replica(M70, H100, 1, 1, 16, 0.9, T, S, pool="a", key_prefix="cluster.pools[0].parallelism")
    msg = str(e.value)
    assert e.value.key == "cluster.pools[0].parallelism.tp"
    assert "\n" not in msg and msg.count("pool 'a'") == 1
    w = M70.weight_bytes
    r = activation_reserve_bytes(M70, T, S)
    assert f"needs {(w + r + 16 * M70.kv_bytes_per_token) / 1e9:.1f} GB per GPU at tp=1, pp=1" in msg
    assert f"({w / 1e9:.1f} GB weights + {r / 1e9:.1f} GB activations + KV)" in msg
    assert f"h100_sxm offers {H100.memory_bytes * 0.9 / 1e9:.1f} GB (90% of 85.5 GB)" in msg
    two = plan_replica(M70, H100, 2, 1, 16, 0.9, T, S)  # it does fit at tp=2, and is the smallest
    assert f"the smallest layout that fits is tp=2 (room for {two.kv_capacity_tokens:,} KV tokens" in msg


def test_no_single_node_tp_fits_suggests_pp():
    t4 = load_hardware("t4")  # 16 GB: 70B needs 17.6 GB of weights per GPU even at tp=8 (one node)
    with pytest.raises(ConfigError) as e:
        plan_replica(M70, t4, 8, 1, 16, 0.9, T, S)
    assert "smallest layout that fits is tp=4 x pp=3 (room for " in str(e.value)
    assert plan_replica(M70, t4, 4, 3, 16, 0.9, T, S).num_gpus == 12
    for tp in (1, 2, 4, 8):  # every layout of fewer GPUs, or of 12 with a larger tp, does not fit
        for pp in range(1, 13):
            if tp * pp < 12 or (tp * pp == 12 and tp > 4):
                with pytest.raises(ConfigError):
                    plan_replica(M70, t4, tp, pp, 16, 0.9, T, S)


# -- step cost --------------------------------------------------------------------------------
def test_build_is_todays_roofline_for_one_gpu():
    c = build_parallel_cost(M8, H100, 1, 1, 3e-3)
    assert type(c) is RooflineCost and c.host_overhead_s == 3e-3
    assert isinstance(build_parallel_cost(M8, H100, 2, 1, 3e-3, comm=FakeComm()), ParallelCost)


def test_roofline_flags_drop_embedding_and_head():
    shape = BatchShape([(300, 0)], 7, 7000, 8)
    full = RooflineCost(M8, H100).step_time(shape)
    mid = RooflineCost(M8, H100, embed=False, head=False).step_time(shape)
    assert mid.gemm_s == RooflineCost(M8, H100).step_time(BatchShape([(300, 0)], 7, 7000, 0)).gemm_s
    assert mid.attn_s == full.attn_s and mid.other_s < full.other_s and mid.gemm_s < full.gemm_s
    wide = RooflineCost(M8, H100, sample_vocab=2 * M8.vocab_size).step_time(shape)
    assert wide.gemm_s == full.gemm_s and wide.other_s > full.other_s


shapes = st.builds(lambda chunks, n, ctx, extra: BatchShape(chunks, n, n * ctx if n else 0, n + extra),
                   st.lists(st.tuples(st.integers(1, 2048), st.integers(0, 8192)), max_size=3),
                   st.integers(0, 256), st.integers(1, 4096), st.integers(0, 1))


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_tp1_pp1_parallel_cost_equals_roofline(shape):
    if not shape.num_tokens:
        return
    assert _pcost("llama-3.1-8b", 1, 1).step_time(shape) == RooflineCost(M8, H100, 3e-3).step_time(shape)


LAYOUTS = [("llama-3.1-8b", 1, 1), ("llama-3.1-8b", 2, 1), ("llama-3.1-70b", 4, 1), ("llama-3.1-70b", 8, 1),
           ("llama-3.1-8b", 2, 2), ("llama-3.1-70b", 1, 3), ("qwen2.5-0.5b", 2, 3)]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(LAYOUTS), st.integers(1, 512), st.integers(1, 32768))
def test_stepped_equals_decode_step_fn(layout, n, mean_ctx):
    cost = _pcost(*layout)
    c = n * mean_ctx
    stepped = cost.step_time(BatchShape([], n, c, n))
    price, fx = cost.decode_step_fn(n)
    a = price(c)
    # what the engine adds: gemm + attn + (other + comm) + host
    assert fx.gemm_s + a + (fx.other_s + fx.comm_s) + fx.host_s == stepped.total_s
    assert (a, fx.gemm_s, fx.other_s, fx.comm_s, fx.host_s) == (
        stepped.attn_s, stepped.gemm_s, stepped.other_s, stepped.comm_s, stepped.host_s)
    run = getattr(price, "run", None)  # pp = 1: the stage's closed-form run, bit for bit too
    if run is not None:
        out = run(c, 5, 0.0, math.inf, fx.gemm_s, fx.other_s + fx.comm_s, fx.host_s)
        if out is not None:
            assert out[1] == [cost.step_time(BatchShape([], n, c + i * n, n)).total_s for i in range(5)]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(LAYOUTS), shapes)
def test_stage_times_compose_the_step(layout, shape):
    if not shape.num_tokens:
        return
    cost = _pcost(*layout)
    name, tp, pp = layout
    stages = cost.stage_times(shape)
    assert len(stages) == pp
    for i, (sti, n) in enumerate(zip(stages, stage_layers(load_model(name).num_layers, pp))):
        own = RooflineCost(shard_model(load_model(name), tp, n), H100, 3e-3 if i == 0 else 0.0, embed=i == 0,
                           head=i == pp - 1, sample_vocab=load_model(name).vocab_size).step_time(shape)
        assert (sti.gemm_s, sti.attn_s, sti.other_s, sti.host_s) == (own.gemm_s, own.attn_s, own.other_s, own.host_s)
        assert sti.total_s == sti.gemm_s + sti.attn_s + (sti.other_s + sti.comm_s) + sti.host_s
    whole = cost.step_time(shape)
    for part in ("gemm_s", "attn_s", "other_s"):
        acc = 0.0
        for sti in stages:
            acc += getattr(sti, part)
        assert getattr(whole, part) == acc
    p2p = cost.p2p_s(shape)
    assert whole.total_s == pytest.approx(sum(s.total_s for s in stages) + (pp - 1) * p2p, rel=1e-12)
    assert (p2p == 0.0) == (pp == 1)


def test_comm_counts_and_bytes():
    fake = FakeComm()
    cost = ParallelCost(M70, H100, 4, 1, comm=fake)
    h, b = M70.hidden_size, 2
    fake.calls.clear()
    c = cost.stage_comm_s(300, 5)[0]
    assert fake.calls == [("all_reduce", 300 * h * b, 4), ("all_gather", 5 * 128256 * b, 4)]
    assert c == (2 * 80 + 1) * fake.all_reduce_s(300 * h * b, 4) + fake.all_gather_s(5 * 128256 * b, 4)
    assert cost.stage_comm_s(600, 5)[0] > c  # all-reduce bytes grow with the step's tokens
    piped = ParallelCost(M70, H100, 2, 2, comm=FakeComm())
    c0, c1 = piped.stage_comm_s(300, 5)
    ar = fake.all_reduce_s(300 * h * b, 2)
    assert c0 == (2 * 40 + 1) * ar and c1 == 2 * 40 * ar + fake.all_gather_s(5 * 128256 * b, 2)
    # p2p: hidden_states and residual, each a 1/tp slice sent then all-gathered
    one = fake.send_recv_s(300 * h * b // 2) + fake.all_gather_s(300 * h * b, 2)
    assert piped.p2p_s(BatchShape([(300, 0)], 0, 0, 1)) == 2 * one


def test_comm_grows_with_tp():
    shape = BatchShape([], 64, 64 * 2000, 64)
    comm = [ParallelCost(M70, H100, tp, 1, comm=FakeComm()).step_time(shape).comm_s for tp in (1, 2, 4, 8)]
    assert comm[0] == 0.0 and comm[0] < comm[1] < comm[2] < comm[3]


def test_cuda_graph_wrapper_reads_the_per_gpu_shard():
    cost = ParallelCost(M70, H100, 4, 1, 3e-3, comm=FakeComm())
    assert cost.model == shard_model(M70, 4) and cost.hw is H100 and cost.backend == "vendor"
    g = CudaGraphCost(cost)
    shape = BatchShape([], 60, 60 * 1000, 60)
    st_g, padded = g.step_time(shape), cost.step_time(BatchShape([], 64, 60 * 1000 + 4, 60))
    assert st_g.comm_s == padded.comm_s and st_g.host_s == padded.host_s
    assert st_g.total_s == pytest.approx(padded.total_s - sum(g._launch), rel=1e-12)
    eff = {k: H100.op_efficiency(k, "vendor").launch_s for k in ("gemm", "attn_decode", "elementwise")}
    assert g._launch[0] == (4 * 80 + 1) * max(0.0, eff["gemm"] - 1e-6)


def test_sharded_model_is_a_frozen_model_spec():
    s = shard_model(M70, 4, num_layers=20)
    assert isinstance(s, ModelSpec) and s.num_layers == 20 and s.hidden_size == M70.hidden_size
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.num_heads = 1


def test_fast_forward_run_path_is_exercised_and_exact():
    cost = _pcost("llama-3.1-70b", 4, 1)
    price, fx = cost.decode_step_fn(64)
    out = price.run(64 * 2048, 8, 0.0, math.inf, fx.gemm_s, fx.other_s + fx.comm_s, fx.host_s)
    assert out is not None and fx.comm_s > 0
    assert out[1] == [cost.step_time(BatchShape([], 64, 64 * 2048 + i * 64, 64)).total_s for i in range(8)]


def test_default_comm_model_is_the_node_nccl_model():
    comm_mod = pytest.importorskip("sim.cost.comm")
    cost = ParallelCost(M70, H100, 4, 1, 3e-3)
    assert isinstance(cost.comm, comm_mod.CommModel)
    ref = comm_mod.CommModel(H100)
    h = M70.hidden_size
    want = (2 * 80 + 1) * ref.all_reduce_s(64 * h * 2, 4) + ref.all_gather_s(64 * 128256 * 2, 4)
    assert cost.step_time(BatchShape([], 64, 64 * 2048, 64)).comm_s == want > 0
