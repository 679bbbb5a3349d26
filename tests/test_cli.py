"""CLI: output, files, and one-line errors instead of tracebacks."""
import json

import yaml
from typer.testing import CliRunner

from sim.cli import app
from tests.conftest import ROOT, small_config

runner = CliRunner()


def cfg_file(tmp_path, **over):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(small_config(**over)))
    return p


def test_run_prints_table_and_writes_outputs(tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["run", str(cfg_file(tmp_path)), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "TTFT" in r.output and "throughput" in r.output
    for f in ("summary.json", "requests.parquet", "iterations.parquet", "config.resolved.yaml"):
        assert (out / f).exists()
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["engine"]["max_num_seqs"] == 32 and resolved["fast_forward"] is True


def test_run_json_and_set(tmp_path):
    r = runner.invoke(app, ["run", str(cfg_file(tmp_path)), "--json", "--no-progress",
                            "--set", "workload.num_requests=50",
                            "--set", "workload.output_tokens={name: fixed, params: {value: 4}}"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["num_requests"] == 50 and s["num_completed"] == 50


def check_error(args, *fragments):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for f in fragments:
        assert f in r.output, (f, r.output)


def test_bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [x\n")
    check_error(["run", str(p)], str(p), "invalid YAML")


def test_unknown_model_and_hardware(tmp_path):
    p = cfg_file(tmp_path)
    check_error(["run", str(p), "--set", "model=gpt-9"], "unknown model 'gpt-9'", "llama-3.1-8b")
    check_error(["run", str(p), "--set", "hardware=h900"], "unknown hardware 'h900'", "h100_sxm")


def test_impossible_values(tmp_path):
    p = cfg_file(tmp_path)
    check_error(["run", str(p), "--set", "engine.max_num_seqs=-1"], str(p), "engine.max_num_seqs", ">= 1")
    check_error(["run", str(p), "--set", "model=llama-3.1-70b"], str(p), "llama-3.1-70b needs", "GB per GPU",
                "smallest layout that fits is tp=2")
    check_error(["run", str(p), "--set", "parallelism.tp=3"], "parallelism.tp", "must divide")
    check_error(["run", str(p), "--set", "parallelism.pp=33"], "parallelism.pp")
    check_error(["run", str(p), "--set", "cluster={pools: [{name: a, num_replicas: 0}]}"],
                "cluster.pools[0].num_replicas", ">= 1")
    check_error(["run", str(p), "--set", "cluster={router: {name: nope}, pools: [{name: a, num_replicas: 2}]}"],
                "cluster.router", "unknown router")
    check_error(["run", str(p), "--set", "cluster={pools: [{name: a, replica: 2}]}"], "cluster.pools[0].replica")
    check_error(["run", str(p), "--set", "engine.max_num_batched_tokens=8"], "engine.max_num_batched_tokens")
    check_error(["run", str(p), "--set", "workload.arrival={name: poison, params: {}}"],
                "workload.arrival.name", "poisson")
    check_error(["run", str(p), "--set", "workload.arrival.params={rate: 3}"], "workload.arrival.params.rate")
    check_error(["run", str(p), "--set", "workload.prompt_tokens.params={low: 9, high: 2}"], "workload.prompt_tokens")
    check_error(["run", str(tmp_path / "missing.yaml")], "missing.yaml", "no such file")


def test_models_hardware_and_cost():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "qwen2.5-72b" in r.output
    r = runner.invoke(app, ["hardware"])
    assert r.exit_code == 0 and "rtx_5070_ti" in r.output and "t4" in r.output
    r = runner.invoke(app, ["cost", "gemm", "--hardware", "h100_sxm", "--m", "128", "--n", "6144", "--k", "4096", "--json"])
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["time_s"] > 0 and d["flops"] == 2 * 128 * 6144 * 4096
    r = runner.invoke(app, ["cost", "attention-decode", "--hardware", "h200_sxm", "--batch", "64", "--context", "2048",
                            "--heads", "32", "--kv-heads", "8", "--head-dim", "128"])
    assert r.exit_code == 0 and float(r.output) > 0
    check_error(["cost", "gemm", "--hardware", "nope", "--m", "1", "--n", "1", "--k", "1"], "unknown hardware")
