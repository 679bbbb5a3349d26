"""Integration: the real traces in ../shared/traces read, and their stats match stats.json."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sim.config import TraceSpec, load_config
from sim.rng import RngStreams
from sim.workload.traces import read_trace, sample_lengths, trace_stats

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.shared,
              pytest.mark.skipif(not (TRACES / "stats.json").exists(),
                                 reason=f"shared traces not found at {TRACES} (expected beside the checkout)")]

# stats.json key -> (file under TRACES, {our stat: stats.json stat})
COMMON = {"rows": "rows", "prompt_tokens_mean": "in_mean", "prompt_tokens_p50": "in_p50", "prompt_tokens_p99": "in_p99",
          "prompt_tokens_max": "in_max", "output_tokens_mean": "out_mean", "output_tokens_p50": "out_p50",
          "output_tokens_p99": "out_p99", "output_tokens_max": "out_max"}
TIMED = {"span_s": "span_s", "mean_rate_per_s": "mean_rate_rps", "iod_1s": "IoD_1s", "iod_60s": "IoD_60s",
         "interarrival_cv": "interarrival_cv", "peak_1s_over_mean": "peak_1s_over_mean"}
PREFIX = {"block_refs": "block_refs", "distinct_blocks": "unique_blocks", "repeat_ref_frac": "repeat_ref_frac",
          "prefix_hit_frac": "prefix_hit_frac", "prefix_hit_tok_frac": "prefix_hit_tok_frac",
          "first_block_hit_frac": "reqs_with_prefix_hit_frac"}
CASES = {
    "azure_llm_inference_2023/code": ("azure_llm_inference_2023/AzureLLMInferenceTrace_code.csv", {**COMMON, **TIMED}),
    "azure_llm_inference_2023/conv": ("azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv", {**COMMON, **TIMED}),
    "mooncake_fast25/conversation_trace": ("mooncake_fast25/conversation_trace.jsonl", {**COMMON, **TIMED, **PREFIX}),
    "mooncake_fast25/synthetic_trace": ("mooncake_fast25/synthetic_trace.jsonl", {**COMMON, **TIMED, **PREFIX}),
    "sharegpt_8k_lengths": ("sharegpt_8k_lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv", COMMON),
    "arxiv_summarization_lengths": (
        "arxiv_summarization_lengths/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", COMMON),
}


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((TRACES / "stats.json").read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_real_trace_matches_stats_json(name, expected):
    rel, keys = CASES[name]
    t0 = time.perf_counter()
    df = read_trace(TraceSpec(path=rel), str(TRACES))
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"reading {rel} took {elapsed:.2f} s"
    assert df.attrs["skipped_rows"] == {}
    got = trace_stats(df)
    for ours, theirs in keys.items():
        assert got[ours] == pytest.approx(expected[name][theirs], rel=1e-9), ours


def test_readme_row_counts_and_spans():
    # README table: 8,819 + 19,366 rows, 57.3 + 58.4 min; Mooncake 12,031 + 3,993 rows, 59.0 + 17.0 min
    for rel, rows, minutes in [("azure_llm_inference_2023/AzureLLMInferenceTrace_code.csv", 8819, 57.3),
                               ("azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv", 19366, 58.4),
                               ("mooncake_fast25/conversation_trace.jsonl", 12031, 59.0),
                               ("mooncake_fast25/synthetic_trace.jsonl", 3993, 17.0)]:
        df = read_trace(TraceSpec(path=rel), str(TRACES))
        assert len(df) == rows and df["arrival_s"].iloc[-1] / 60 == pytest.approx(minutes, abs=0.06)


def test_servegen_deepseek_hour(expected):
    df = read_trace(TraceSpec(path="servegen_alibaba/data/reason/deepseek-r1", end_s=3600.0), str(TRACES), RngStreams(1))
    assert df.attrs["format"] == "servegen" and df["prompt_tokens"].min() >= 1 and df["output_tokens"].min() >= 1
    s = trace_stats(df)
    assert 60_000 < s["rows"] < 80_000 and s["span_s"] == pytest.approx(3600, abs=5)
    assert df["client_id"].nunique() <= expected["servegen_alibaba/reason/deepseek-r1"]["clients"]


def test_servegen_m_large_arrivals_with_sharegpt_lengths():
    # lengths_path resolves against base_dir, like path
    cols = {"lengths_path": "sharegpt_8k_lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"}
    spec = TraceSpec(path="servegen_alibaba/data/language/m-large", max_requests=3000, columns=cols)
    df = read_trace(spec, str(TRACES), RngStreams(2))
    assert len(df) == 3000 and df["prompt_tokens"].max() <= 8141 and "hash_ids" not in df


def test_workload_yamls_resolve():
    for f in sorted((REPO / "workloads").glob("trace_*.yaml")):
        cfg = load_config(f)
        df = read_trace(cfg.workload.trace, cfg.base_dir, RngStreams(cfg.seed))
        if "arrival_s" in df:
            assert len(df) == cfg.workload.trace.max_requests
        else:
            p, o = sample_lengths(df, cfg.workload.num_requests, RngStreams(cfg.seed).stream("workload.lengths"))
            assert len(p) == cfg.workload.num_requests and p.min() >= 1 and o.min() >= 1
