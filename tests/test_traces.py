"""Trace readers, replay controls, errors and statistics on tiny files written per test."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sim.config import ConfigError, TraceSpec
from sim.rng import RngStreams
from sim.workload.traces import (READERS, detect_format, lengths_table, prefix_reuse, read_trace,
                                 sample_lengths, trace_stats)
from sim import cli_trace

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.0000000,879,1
2023-11-16 18:16:00.0000001,91,7
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def mooncake_text(rows) -> str:
    return "".join(json.dumps({"timestamp": t, "input_length": i, "output_length": o, "hash_ids": h}) + "\n"
                   for t, i, o, h in rows)


MOON = [(0, 600, 10, [0, 1]), (1500, 1024, 5, [0, 2]), (3000, 100, 7, [3]), (3000, 1100, 9, [0, 2, 4])]


def spec(path, **kw) -> TraceSpec:
    return TraceSpec(path=str(path), **kw)


# ----------------------------------------------------------------------------- readers

def test_azure_exact(tmp_path):
    p = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", AZURE)
    df = read_trace(spec(p))
    assert list(df.columns) == ["arrival_s", "prompt_tokens", "output_tokens"]
    assert df["arrival_s"].dtype == np.float64 and df["prompt_tokens"].dtype == np.int64
    np.testing.assert_allclose(df["arrival_s"], [0.0, 4.314579, 4.319410, 13.3194101], rtol=0, atol=1e-9)
    assert df["prompt_tokens"].tolist() == [374, 396, 879, 91]
    assert df["output_tokens"].tolist() == [44, 109, 1, 7]
    assert df.attrs["skipped_rows"] == {} and df.attrs["format"] == "azure"


def test_mooncake_exact(tmp_path):
    p = write(tmp_path, "trace.jsonl", mooncake_text(MOON))
    df = read_trace(spec(p))
    assert df.attrs["format"] == "mooncake" and df.attrs["block_size_tokens"] == 512
    assert df["arrival_s"].tolist() == [0.0, 1.5, 3.0, 3.0]
    assert df["prompt_tokens"].tolist() == [600, 1024, 100, 1100]
    assert df["hash_ids"].tolist() == [[0, 1], [0, 2], [3], [0, 2, 4]]


def test_lengths_only_exact(tmp_path):
    p = write(tmp_path, "sharegpt_small.csv",
              "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n74,918,992,0.08\n290,905,1195,0.32\n")
    df = read_trace(spec(p))
    assert df.attrs["format"] == "sharegpt" and df.attrs["lengths_only"]
    assert "arrival_s" not in df.columns
    assert df["prompt_tokens"].tolist() == [74, 290] and df["output_tokens"].tolist() == [918, 905]
    with pytest.raises(ConfigError, match="no arrival times"):
        read_trace(spec(p, end_s=10.0))


def test_copies_superpose_shifted_copies(tmp_path):
    """copies=3: every row three times; the first copy as it was, the others shifted within the
    span and wrapped (times stay in [0, span], sorted); block hashes offset per copy so copies
    share no prefix; the same seed gives the same offsets."""
    p = write(tmp_path, "trace.jsonl", mooncake_text(MOON))
    one = read_trace(spec(p))
    three = read_trace(spec(p, copies=3), rng_streams=RngStreams(5))
    assert len(three) == 3 * len(one)
    t = three["arrival_s"].to_numpy()
    assert t[0] == 0.0 and (np.diff(t) >= 0).all() and t[-1] <= 3.0
    assert sorted(three["prompt_tokens"]) == sorted(one["prompt_tokens"].tolist() * 3)
    keys = [tuple(h) for h in three["hash_ids"]]
    assert len(set(keys)) == 3 * len({tuple(h) for h in one["hash_ids"]})  # no key shared across copies
    again = read_trace(spec(p, copies=3), rng_streams=RngStreams(5))
    pd.testing.assert_frame_equal(three, again)


def test_copies_errors(tmp_path):
    lengths = write(tmp_path, "sharegpt_small.csv",
                    "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n74,918,992,0.08\n")
    with pytest.raises(ConfigError, match="copies"):
        read_trace(spec(lengths, copies=2))  # no arrival times to shift
    one_row = write(tmp_path, "one.jsonl", mooncake_text(MOON[:1]))
    with pytest.raises(ConfigError, match="workload.trace.copies"):
        read_trace(spec(one_row, copies=2))  # a trace of no span
    from sim.config import load_config
    with pytest.raises(ConfigError, match="workload.trace.copies"):
        load_config({"model": "llama-3.1-8b", "hardware": "h100_sxm",
                     "workload": {"trace": {"path": str(one_row), "copies": 0}}})


def test_generic_csv_and_jsonl(tmp_path):
    p = write(tmp_path, "mine.csv", "t,in,out,blocks\n0.5,10,3,\"[1, 2]\"\n2.0,20,4,\"[1]\"\n")
    cols = {"arrival_s": "t", "prompt_tokens": "in", "output_tokens": "out", "hash_ids": "blocks",
            "block_size_tokens": "16"}
    df = read_trace(spec(p, columns=cols))
    assert df.attrs["format"] == "csv" and df.attrs["block_size_tokens"] == 16
    assert df["arrival_s"].tolist() == [0.0, 1.5] and df["hash_ids"].tolist() == [[1, 2], [1]]
    q = write(tmp_path, "mine.jsonl", '{"ms": 100, "p": 5, "o": 6}\n\n{"ms": 350, "p": 7, "o": 8}\n')
    df = read_trace(spec(q, columns={"timestamp_ms": "ms", "prompt_tokens": "p", "output_tokens": "o"}))
    assert df["arrival_s"].tolist() == [0.0, 0.25] and df["output_tokens"].tolist() == [6, 8]
    with pytest.raises(ConfigError, match="columns.bogus"):
        read_trace(spec(p, columns={**cols, "bogus": "x"}))


def test_servegen_sampling(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "chunk-0-trace.csv").write_text("0,0.5,1.0,Gamma,1.0,2.0\n600,0,0,,0,0\n1200,0.1,2.0,Weibull,0.7,3.0\n")
    (d / "chunk-3-trace.csv").write_text("0,0.2,1.0,Gamma,0.5,1.0\n600,0.05,1.0,Gamma,2.0,1.0\n1200,0,0,,0,0\n")
    for cid in (0, 3):
        (d / f"chunk-{cid}-dataset.json").write_text(json.dumps(
            {"0": {"input_tokens": "{0: 0.5, 100: 0.25, 200: 0.25}", "output_tokens": "{7: 1.0}"}}))
    df = read_trace(spec(d, end_s=1800.0), rng_streams=RngStreams(3))
    # round(rate * 600) requests per client-window: 300 + 120 + 30 + 60
    assert len(df) == 510 and df.attrs["format"] == "servegen"
    assert sorted(df.groupby("client_id").size().tolist()) == [150, 360]
    assert set(df["prompt_tokens"]) == {100, 200} and set(df["output_tokens"]) == {7}
    assert df["arrival_s"].iloc[0] == 0.0 and df["arrival_s"].is_monotonic_increasing
    again = read_trace(spec(d, end_s=1800.0), rng_streams=RngStreams(3))
    pd.testing.assert_frame_equal(df, again)
    other = read_trace(spec(d, end_s=1800.0), rng_streams=RngStreams(4))
    assert not np.array_equal(df["arrival_s"], other["arrival_s"])
    with pytest.raises(ConfigError, match="end_s or max_requests"):
        read_trace(spec(d), rng_streams=RngStreams(3))


def test_servegen_arrivals_only_with_lengths_path(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "chunk-1-trace.csv").write_text("0,0.1,1.0,Gamma,1.0,1.0\n")
    df = read_trace(spec(d, end_s=600.0), rng_streams=RngStreams(0))
    assert df.attrs["arrivals_only"] and "prompt_tokens" not in df and len(df) == 60
    write(tmp_path, "lens.csv", "num_prefill_tokens,num_decode_tokens\n11,22\n")
    df = read_trace(spec(d, end_s=600.0, columns={"lengths_path": "lens.csv"}), str(tmp_path), RngStreams(0))
    assert set(df["prompt_tokens"]) == {11} and set(df["output_tokens"]) == {22}


def test_registry_and_detection(tmp_path):
    assert {"azure", "mooncake", "servegen", "sharegpt", "arxiv", "lengths", "csv", "jsonl"} <= set(READERS.names())
    assert detect_format(write(tmp_path, "x.csv", AZURE)) == "azure"
    assert detect_format(write(tmp_path, "y.jsonl", mooncake_text(MOON))) == "mooncake"
    with pytest.raises(ConfigError, match="cannot detect"):
        detect_format(write(tmp_path, "z.csv", "a,b\n1,2\n"))
    with pytest.raises(ConfigError, match="unknown trace format"):
        read_trace(spec(tmp_path / "x.csv", format="parquet"))


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("text, line, what", [
    (AZURE.replace("396,109", "396,109,5"), 3, "malformed row: expected 3 fields"),
    (AZURE.replace("396,109", "396"), 3, "malformed row (empty 'GeneratedTokens')"),
    (AZURE.replace("879,1", "-879,1"), 4, "invalid 'ContextTokens': expected an integer token count >= 1, got '-879'"),
    (AZURE.replace("879,1", "879,0"), 4, "invalid 'GeneratedTokens'"),
    (AZURE.replace("879,1", "879.5,1"), 4, "invalid 'ContextTokens'"),
    (AZURE.replace("18:15:50.9951690", "bad-time"), 3, "invalid 'TIMESTAMP'"),
    (AZURE.replace("18:16:00", "18:15:00"), 5, "unsorted 'TIMESTAMP': expected non-decreasing"),
])
def test_azure_errors_name_file_and_line(tmp_path, text, line, what):
    p = write(tmp_path, "a.csv", text)
    with pytest.raises(ConfigError) as e:
        read_trace(spec(p, format="azure"))
    msg = str(e.value)
    assert f"{p}, line {line}" in msg and what in msg


def test_missing_column(tmp_path):
    p = write(tmp_path, "a.csv", AZURE.replace("GeneratedTokens", "Gen"))
    with pytest.raises(ConfigError, match=r"a\.csv, line 1: key 'workload.trace': missing column 'GeneratedTokens'"):
        read_trace(spec(p, format="azure"))


def test_mooncake_errors(tmp_path):
    rows = mooncake_text(MOON).splitlines()
    bad = {2: '{"timestamp": 1500, "input_length": 1024', 3: rows[2].replace('"output_length": 7', '"output_length": -7'),
           4: rows[3].replace('"timestamp": 3000', '"timestamp": 1000')}
    for line, new in bad.items():
        text = "\n".join(new if i + 1 == line else r for i, r in enumerate(rows)) + "\n"
        p = write(tmp_path, f"m{line}.jsonl", text)
        with pytest.raises(ConfigError, match=rf"m{line}\.jsonl, line {line}:"):
            read_trace(spec(p, format="mooncake"))
    p = write(tmp_path, "nohash.jsonl", '{"timestamp": 0, "input_length": 1, "output_length": 1}\n')
    with pytest.raises(ConfigError, match="missing column 'hash_ids'"):
        read_trace(spec(p, format="mooncake"))


def test_skip_counts_bad_rows(tmp_path):
    text = AZURE + "2023-11-16 18:16:01.0,5,6,7\n2023-11-16 18:16:02.0,-1,6\n2023-11-16 18:16:03.0,5,0\n\n" \
                   "2023-11-16 18:16:04.0,8,9\n"
    p = write(tmp_path, "a.csv", text)
    df = read_trace(spec(p, format="azure", on_bad_row="skip"))
    assert len(df) == 5 and df["prompt_tokens"].tolist() == [374, 396, 879, 91, 8]
    assert sum(df.attrs["skipped_rows"].values()) == 4
    assert df.attrs["skipped_rows"]["malformed"] == 1
    assert df.attrs["skipped_lines"] == [6, 7, 8, 9]


def test_skip_sorts_unsorted_with_count(tmp_path):
    p = write(tmp_path, "m.jsonl", mooncake_text([(0, 1, 1, [0]), (2000, 2, 2, [1]), (1000, 3, 3, [2])]))
    df = read_trace(spec(p, on_bad_row="skip"))
    assert df["arrival_s"].tolist() == [0.0, 1.0, 2.0] and df["prompt_tokens"].tolist() == [1, 3, 2]
    assert df.attrs["reordered_rows"] == 1


# ----------------------------------------------------------------------------- replay controls

def uniform_trace(tmp_path, n=101, gap_ms=1000) -> Path:
    return write(tmp_path, "u.jsonl", mooncake_text([(i * gap_ms, i + 1, 1, [i]) for i in range(n)]))


def test_window_rezeros(tmp_path):
    df = read_trace(spec(uniform_trace(tmp_path), start_s=10.0, end_s=20.0))
    assert len(df) == 10 and df["arrival_s"].iloc[0] == 0.0 and df["prompt_tokens"].iloc[0] == 11


def test_time_scale_rate_target_and_max(tmp_path):
    p = uniform_trace(tmp_path)
    assert read_trace(spec(p, time_scale=0.5))["arrival_s"].iloc[-1] == pytest.approx(50.0)
    df = read_trace(spec(p, target_rate_per_s=4.0))
    assert trace_stats(df)["mean_rate_per_s"] == pytest.approx(4.0)
    assert len(read_trace(spec(p, max_requests=7))) == 7


def test_sample_frac_deterministic(tmp_path):
    p = uniform_trace(tmp_path, n=1000)
    a = read_trace(spec(p, sample_frac=0.3), rng_streams=RngStreams(5))
    b = read_trace(spec(p, sample_frac=0.3), rng_streams=RngStreams(5))
    c = read_trace(spec(p, sample_frac=0.3), rng_streams=RngStreams(6))
    pd.testing.assert_frame_equal(a, b)
    assert not a["prompt_tokens"].equals(c["prompt_tokens"])
    assert 240 < len(a) < 360 and a["arrival_s"].iloc[0] == 0.0


@settings(max_examples=30, deadline=None)
@given(gaps=st.lists(st.integers(0, 5000), min_size=2, max_size=40),
       scale=st.floats(0.1, 10.0), frac=st.floats(0.2, 1.0), seed=st.integers(0, 100))
def test_replay_properties(tmp_path_factory, gaps, scale, frac, seed):
    tmp = tmp_path_factory.mktemp("p")
    t = np.cumsum([0] + gaps)
    p = write(tmp, "h.jsonl", mooncake_text([(int(x), 1 + i, 1, [i]) for i, x in enumerate(t)]))
    try:
        df = read_trace(spec(p, time_scale=scale, sample_frac=frac), rng_streams=RngStreams(seed))
    except ConfigError as e:  # thinning may drop every row: a clear error, not an empty frame
        assert "no requests left" in str(e)
        return
    a = df["arrival_s"].to_numpy()
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0) and len(df) <= len(t)
    assert df["prompt_tokens"].is_monotonic_increasing  # order kept, rows only dropped
    if len(df) == len(t):
        np.testing.assert_allclose(a, (t - t[0]) / 1000 * scale)


def test_sample_lengths(tmp_path):
    df = pd.DataFrame({"prompt_tokens": [1, 2, 3], "output_tokens": [10, 20, 30]})
    p, o = sample_lengths(df, 7, None)
    assert p.tolist() == [1, 2, 3, 1, 2, 3, 1] and o.tolist() == [10, 20, 30, 10, 20, 30, 10]
    p1, o1 = sample_lengths(df, 50, np.random.default_rng(1))
    p2, _ = sample_lengths(df, 50, np.random.default_rng(1))
    assert np.array_equal(p1, p2) and np.array_equal(o1, p1 * 10)
    q = write(tmp_path, "l.csv", "num_prefill_tokens,num_decode_tokens\n3,4\n")
    assert lengths_table(spec(q)).values.tolist() == [[3, 4]]


# ----------------------------------------------------------------------------- stats + CLI

def test_stats_exact(tmp_path):
    df = read_trace(spec(write(tmp_path, "m.jsonl", mooncake_text(MOON))))
    s = trace_stats(df)
    assert s["rows"] == 4 and s["span_s"] == 3.0 and s["mean_rate_per_s"] == 1.0
    assert s["prompt_tokens_p50"] == pytest.approx(812.0) and s["output_tokens_max"] == 10
    gaps = np.array([1.5, 1.5, 0.0])
    assert s["interarrival_cv"] == pytest.approx(gaps.std() / gaps.mean())
    assert s["iod_1s"] == pytest.approx(np.var([1, 1, 0, 2]) / 1.0)
    # blocks [0,1] [0,2] [3] [0,2,4]: 8 refs, 5 distinct; leading hits 0 + 1 + 0 + 2 = 3
    assert s["block_refs"] == 8 and s["distinct_blocks"] == 5
    assert s["repeat_ref_frac"] == pytest.approx(3 / 8) and s["prefix_hit_frac"] == pytest.approx(3 / 8)
    assert s["prefix_hit_tok_frac"] == pytest.approx((512 + 1024) / 2824)


def test_prefix_reuse_non_leading_repeat():
    s = prefix_reuse(pd.Series([[1, 2], [3, 2]]))
    assert s["repeat_ref_frac"] == 0.25 and s["prefix_hit_frac"] == 0.0


def test_cli_stats_table_json_plot_and_error(tmp_path):
    p = write(tmp_path, "AzureLLMInferenceTrace_code.csv", AZURE)
    r = CliRunner().invoke(cli_trace.app, ["stats", str(p)])
    assert r.exit_code == 0 and "mean_rate_per_s" in r.output and "prompt_tokens_p99" in r.output
    r = CliRunner().invoke(cli_trace.app, ["stats", str(p), "--json", "--plot", str(tmp_path / "plots")])
    assert r.exit_code == 0
    obj = json.loads(r.stdout.splitlines()[0])
    assert obj["rows"] == 4 and obj["format"] == "azure" and obj["requests_per_min"] == [4]
    assert (tmp_path / "plots" / "arrival_rate.png").stat().st_size > 0
    assert (tmp_path / "plots" / "lengths.png").exists()
    bad = write(tmp_path, "bad.csv", AZURE.replace("879,1", "879,x"))
    r = CliRunner().invoke(cli_trace.app, ["stats", str(bad), "--format", "azure"])
    assert r.exit_code == 2 and "line 4" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
