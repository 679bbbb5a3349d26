"""In-step / whole-step / sustained references (calibrate/stepshape.py, stepref.py, instep.py,
wholestep.py, sustained.py, truth.py): the shape syntax, grids, held-out flags and time estimates
without torch; with torch (CPU, Triton interpreter), that the vendor and Triton reference steps
compute the same function as a float64 reference, and that the pipeline runs end to end."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from calibrate import instep, stepshape, sustained, truth, wholestep
from calibrate.stepshape import parse_decode, parse_prefill, parse_shape

ROOT = Path(__file__).resolve().parents[1]
LLAMA_KV_PER_TOKEN = 2 * 32 * 8 * 128 * 2   # K and V, 32 layers, 8 KV heads x 128, bf16 = 131072 B
QWEN_KV_PER_TOKEN = 2 * 28 * 4 * 128 * 2    # 57344 B


# ------------------------------------------------------------------ shape syntax
def test_parse_shape_fixtures():
    assert parse_shape("2048x1,512x4", "") == ([(2048, 0)] + [(512, 0)] * 4, [])
    assert parse_shape("512+1536x1", "32@1024") == ([(512, 1536)], [1024] * 32)
    assert parse_shape("", "2@10, 3@5:7") == ([], [10, 10, 5, 6, 7])
    # COUNT@LO:HI: LO + (HI - LO) * i // (COUNT - 1)
    assert parse_decode("4@64:1984") == [64, 704, 1344, 1984]
    assert parse_decode("1@77:99") == [77]


@pytest.mark.parametrize("bad", ["512", "0x1", "x1", "512x0", "5+x1", "512xx1"])
def test_parse_prefill_rejects(bad):
    with pytest.raises(ValueError, match="prefill chunk"):
        parse_prefill(bad)


@pytest.mark.parametrize("bad", ["5@", "@5", "0@5", "4@0", "4@100:50", "4@1:2:3", "32"])
def test_parse_decode_rejects(bad):
    with pytest.raises(ValueError, match="decode group"):
        parse_decode(bad)


def test_stepref_parse_shape_importable_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['triton'] = None\n"
            "from calibrate.stepref import parse_shape\n"
            "assert parse_shape('512+1536x1', '2@8') == ([(512, 1536)], [8, 8])\n"
            "import calibrate.instep, calibrate.wholestep, calibrate.sustained, calibrate.truth")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


chunks_st = st.lists(st.tuples(st.integers(1, 9000), st.integers(0, 40000)), max_size=12)
contexts_st = st.lists(st.integers(1, 40000), max_size=40)


@given(chunks_st, contexts_st)
@settings(max_examples=200, deadline=None)
def test_format_then_parse_round_trips(chunks, contexts):
    assert parse_prefill(stepshape.format_prefill(chunks)) == chunks
    assert parse_decode(stepshape.format_decode(contexts)) == contexts
    p, d = stepshape.parse_step(stepshape.step_str(stepshape.format_prefill(chunks), stepshape.format_decode(contexts)))
    assert parse_shape(p, d) == (chunks, contexts)


@given(st.integers(1, 600), st.integers(1, 5000), st.integers(0, 5000))
@settings(max_examples=200, deadline=None)
def test_spread_is_even_and_spans_lo_to_hi(n, lo, width):
    hi = lo + width
    xs = parse_decode(stepshape.spread_str(n, lo, hi))
    assert xs == stepshape.spread(n, lo, hi) and len(xs) == n
    assert xs[0] == lo and (n == 1 or xs[-1] == hi)
    assert all(a <= b for a, b in zip(xs, xs[1:]))
    if n > 1:  # floor of an exact linear ramp: mean within 1 of the midpoint
        assert abs(sum(xs) / n - (lo + hi) / 2) <= 1


# ------------------------------------------------------------------ models
def test_step_models_match_the_simulators_model_files():
    for name in stepshape.REAL:
        md = stepshape.step_model(name)
        spec = yaml.safe_load((ROOT / "sim" / "models" / f"{name}.yaml").read_text())
        assert (md.layers, md.hidden, md.heads, md.kv_heads, md.head_dim, md.inter, md.vocab, md.qkv_bias) == (
            spec["num_hidden_layers"], spec["hidden_size"], spec["num_attention_heads"],
            spec["num_key_value_heads"], spec["head_dim"], spec["intermediate_size"], spec["vocab_size"],
            spec["attention_bias"])
    assert stepshape.step_model("llama-3.1-8b").kv_bytes_per_token() == LLAMA_KV_PER_TOKEN
    assert stepshape.step_model("qwen2.5-7b").kv_bytes_per_token() == QWEN_KV_PER_TOKEN
    assert stepshape.step_model("llama-3.1-8b").layer_gemms() == [
        ("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096)]
    with pytest.raises(KeyError):
        stepshape.step_model("llama-3.1-70b")


# ------------------------------------------------------------------ grids
def test_instep_steps_are_the_issues_list():
    got = stepshape.instep_steps()
    want = [("", f"{b}@{c}") for b in (1, 8, 32, 64, 128, 256) for c in (512, 2048)] + \
           [("512x1", ""), ("2048x1", ""), ("8192x1", ""), ("256x16", ""), ("512x64", "")]
    assert sorted(got) == sorted(want) and len(got) == 17
    assert got[-1] == ("512x64", "")  # the 32k-token step last: a budget cut loses it first


@pytest.mark.parametrize("name,per_token,vendor,triton", [("llama-3.1-8b", LLAMA_KV_PER_TOKEN, 32, 37),
                                                          ("qwen2.5-7b", QWEN_KV_PER_TOKEN, 34, 39)])
def test_wholestep_grid_sizes_and_kv_limit(name, per_token, vendor, triton):
    md = stepshape.step_model(name)
    g_v, g_t = stepshape.wholestep_grid(md, "vendor"), stepshape.wholestep_grid(md, "triton")
    assert (len(g_v), len(g_t)) == (vendor, triton)
    equal = {(b, c) for b in stepshape.WS_BATCHES for c in stepshape.WS_CONTEXTS}
    kept = {(len(parse_decode(d)), parse_decode(d)[0]) for p, d in g_v if not p}
    assert kept == {(b, c) for b, c in equal if b * c * per_token <= 40e9}
    assert all(len(set(parse_decode(d))) <= 1 for _, d in g_v)           # vendor: equal contexts only
    spreads = [parse_decode(d) for p, d in g_t if len(set(parse_decode(d))) > 1]
    assert len(spreads) == 5
    for xs in spreads:  # 64 .. 2 * mean - 64, mean 1024 or 4096 up to flooring
        assert xs[0] == 64 and min(abs(sum(xs) / len(xs) - m) for m in (1024, 4096)) <= 1
    ests = [stepshape.est_step_s(md, *parse_shape(p, d), "triton") for p, d in g_t]
    assert ests == sorted(ests)                                            # cheapest first
    assert {("2048+2048x1", ""), ("512+8192x1", ""), ("512x1", "32@1024"), ("512x1", "128@1024")} <= set(g_v)


def test_heldout_flags_split_every_phase():
    shapes = {s for md in stepshape.models_for(False) for be in ("vendor", "triton")
              for s in stepshape.wholestep_grid(md, be)}
    flags = {s: stepshape.heldout(*s) for s in shapes}
    assert flags == {s: stepshape.heldout(*s) for s in shapes}            # deterministic
    assert 0.2 <= sum(flags.values()) / len(flags) <= 0.45
    for ph in ("decode", "prefill"):
        got = {f for s, f in flags.items() if stepshape.phase(*parse_shape(*s)) == ph}
        assert got == {True, False}


# ------------------------------------------------------------------ estimates
def test_estimates_against_arithmetic_and_a_measurement():
    md = stepshape.step_model("llama-3.1-8b")
    sp = stepshape.H200
    w = stepshape.step_work(md, [], [512])
    weights = 2 * (32 * sum(k * n for _, k, n in md.layer_gemms()) + md.vocab * md.hidden)
    assert w["gemm_bytes"] >= weights
    assert stepshape.est_step_s(md, [], [512]) >= weights / sp.bytes_per_s   # decode: memory roof at least
    # HF LlamaForCausalLM 8B prefill of 8192 tokens, GPU kernel sum on the device tool's H200:
    # 254 ms (calibrate/data/h200_sxm/model_check.csv); decode batch 1 at 512: 6.37 ms
    assert abs(stepshape.est_step_s(md, [(8192, 0)], []) / 0.2543 - 1) < 0.25
    assert abs(stepshape.est_step_s(md, [], [512]) / 0.006368 - 1) < 0.25
    ws, ins = stepshape.est_wholestep_s(), stepshape.est_instep_s()
    assert ws["total"] <= 215 and ins["total"] <= 150                     # what the budgets are sized for
    assert ws["total"] == pytest.approx(sum(v for k, v in ws.items() if k != "total"))
    assert stepshape.ws_executions(0.01) == 1 + 2 + 1 + 1 + 20 and stepshape.ws_executions(0.2) == 1 + 1 + 1 + 20


def test_truth_plan_fits_the_deadline():
    parts = list(truth.PARTS)
    assert truth.plan(parts, 560, False, 60) == {"instep": 140, "wholestep": 190, "sustained": 60}
    tight = truth.plan(parts, 400, False, 60)   # 400 - (190 + 20) - (60 + 20) - 20 = 90 for instep
    assert tight["instep"] == 90 and tight["wholestep"] == 190 and tight["sustained"] == 60
    assert truth.plan(parts[1:], 100, False, 60)["wholestep"] == 0       # cannot fit: skipped
    assert truth.plan(parts, 560, True, 60)["sustained"] == 10


# ------------------------------------------------------------------ tables and parsers
def _rows(method_times, kind="gemm", step=";8@512", be="vendor"):
    return [dict(model="m", backend=be, step=step, op="qkv", kind=kind, shape=f"s{i}", method=m, time_s=str(t))
            for i, mt in enumerate(method_times) for m, t in mt.items()]


def test_ratio_table_medians():
    rows = _rows([{"instep": 1.0, "bench_zero": 1.2, "bench_rotate": 1.0},
                  {"instep": 2.0, "bench_zero": 2.6, "bench_rotate": 1.8},
                  {"instep": 4.0, "bench_zero": 4.4, "bench_rotate": 4.4}])
    rows += _rows([{"instep": 1.0, "bench_read": 0.5}], kind="attn_prefill", step="512x1;")
    tab = instep.ratio_table(rows)
    # n: op shapes with a standalone time of some method (a run may measure only some methods)
    assert [(k, b, p, n) for k, b, p, n, _ in tab] == [("attn_prefill", "vendor", "prefill", 1),
                                                       ("gemm", "vendor", "decode", 3)]
    assert tab[1][4] == pytest.approx({"bench_zero": 1.2, "bench_rotate": 1.0})
    assert tab[0][4] == pytest.approx({"bench_read": 0.5})
    assert "bench_rotate" in instep.format_table(tab)


def test_wholestep_summary_table():
    base = dict(model="m", backend="vendor", phase="decode", num_layers=32, heldout=0)
    rows = [dict(base, prefill="", decode="1@256", mode="graph", time_s="0.004"),
            dict(base, prefill="", decode="1@256", mode="eager_sum", time_s="0.005"),
            dict(base, prefill="", decode="8@256", mode="graph", time_s="0.006")]
    line = wholestep.summary_table(rows).splitlines()[1].split()
    assert line == ["m", "vendor", "decode", "2", "5.000", "1.250"]
    assert wholestep.COLUMNS == ["model", "backend", "phase", "prefill", "decode", "num_layers", "mode",
                                 "time_s", "heldout"]
    assert instep.COLUMNS == ["model", "backend", "step", "op", "kind", "shape", "method", "time_s"]


def test_nvidia_smi_line_and_sustained_summary():
    import datetime as dt
    t0 = dt.datetime(2026, 11, 23, 15, 13, 0)
    r = sustained.parse_smi_line("2026/11/23 15:13:01.500, 1980, 3201, 655.12, 54, 0x0000000000000000", t0, 9.0)
    assert r == {"time_s": 1.5, "sm_mhz": 1980.0, "mem_mhz": 3201.0, "power_w": 655.12, "temp_c": 54.0,
                 "throttle": "0x0000000000000000"}
    r = sustained.parse_smi_line("bad stamp, 1755, 3201, [N/A], 60, 0x4", t0, 9.0)
    assert r["time_s"] == 9.0 and r["power_w"] == "[N/A]" and r["sm_mhz"] == 1755.0
    assert sustained.parse_smi_line("Field is not valid", t0, 0.0) is None
    steps = [(t, 0.10 if t < 30 else 0.11) for t in range(60)]
    clocks = [{"time_s": float(t), "sm_mhz": 1980.0 if t < 30 else 1800.0} for t in range(60)]
    s = sustained.summarize(steps, clocks, 60.0)
    assert (s["first_step_s"], s["last_step_s"], s["first_sm_mhz"], s["last_sm_mhz"]) == (0.10, 0.11, 1980.0, 1800.0)
    assert s["last_over_first"] == pytest.approx(1.1)


# ------------------------------------------------------------------ with torch (CPU + Triton interpreter)
CPU_ENV = dict(os.environ, CALIBRATE_DEVICE="cpu", TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))

CHECK = """
import torch
from calibrate import stepcheck, stepref, stepshape
from calibrate.stepattn import VendorAttn
from calibrate.kernels.gemm import rel_err
for name in ("tiny-llama", "tiny-qwen"):
    md = stepshape.step_model(name)
    va = VendorAttn("cpu", torch.float16, md.heads, md.kv_heads, md.head_dim)
    print(name, stepcheck.check(name, [("8+20x1", "2@33"), ("", "3@5:70")], "cpu", torch.float16, va))
# the check sees wiring: a step without its KV writes attends to stale cache entries
md = stepshape.step_model("tiny-llama")
w = stepref.Weights(md, "triton", "cpu", torch.float16, seed=3)
step = stepref.Step(md, w, "8+20x1", "2@33", stepref.KVPool(1 << 16, "cpu", torch.float16))
stepcheck.fill_priors(step)
step.ops = [op for op in step.ops if op.name != "kv_write"]
step.run()
print("no_kv_write", rel_err(step.env["hf"], stepcheck.reference(step)))
"""


@pytest.mark.slow
def test_vendor_and_triton_steps_compute_the_reference_function():
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    r = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=CPU_ENV, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {}
    for line in r.stdout.splitlines():
        name, rest = line.split(" ", 1)
        got[name] = eval(rest)  # noqa: S307  (our own printed dict / float)
    for name in ("tiny-llama", "tiny-qwen"):
        errs = got[name]
        assert set(errs) == {"vendor 8+20x1;2@33", "triton 8+20x1;2@33", "triton ;3@5:70",
                             "triton_vs_vendor 8+20x1;2@33"}
        assert all(isinstance(v, float) and v < 1e-2 for v in errs.values()), errs
    assert got["no_kv_write"] > 0.05


@pytest.mark.slow
def test_pipeline_runs_end_to_end_on_cpu(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    out = str(tmp_path)
    for cmd in (["-m", "calibrate.instep", "--out", out, "--tiny", "--quick", "--backends", "vendor"],
                ["-m", "calibrate.wholestep", "--out", out, "--tiny", "--quick", "--backends", "vendor"],
                ["-m", "calibrate.truth", "--out", out, "--tiny", "--quick", "--parts", "sustained"]):
        r = subprocess.run([sys.executable] + cmd, cwd=ROOT, env=CPU_ENV, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
    assert "calibrate.truth summary" in r.stdout and "which standalone method" in r.stdout
    assert sorted(os.listdir(out)) == ["instep.csv", "instep_provenance.json", "sustained_clocks.csv",
                                       "sustained_provenance.json", "sustained_steps.csv", "wholestep.csv",
                                       "wholestep_provenance.json"]
    with open(os.path.join(out, "instep.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} >= {"instep", "bench_zero", "bench_read", "bench_rotate", "calib_zero"}
    assert {r["kind"] for r in rows} == {"gemm", "attn_prefill", "attn_decode", "elementwise", "other"}
    with open(os.path.join(out, "wholestep.csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["mode"] for r in rows} == {"graph", "eager_sum"}
    for r in rows:
        parse_shape(r["prefill"], r["decode"])
        assert r["heldout"] == str(int(stepshape.heldout(r["prefill"], r["decode"])))
