"""calibrate.merge: a rerun of some ops replaces their CSVs and windows, keeps the rest."""
import csv
import json

import pytest

from calibrate import grids
from calibrate.merge import MergeError, main, merge


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _folder(d, ops, tag, device="GPU X", quick=False):
    d.mkdir()
    for op in ops:
        _csv(d / f"{op}.csv", [grids.COLUMNS[op], [op, "triton", tag] + ["1"] * (len(grids.COLUMNS[op]) - 3)])
    _csv(d / "windows.csv", [["op", "backend", "shape", "pass", "time_s"]]
         + [[op, "triton", f"s{tag}", "0", tag] for op in ops])
    (d / "provenance.json").write_text(json.dumps({"device_name": device, "ops": ops, "quick": quick,
                                                   "date_utc": tag, "peaks": {"x": 1}}))
    (d / "run.log").write_text(f"log {tag}\n")
    return d


def test_merge_replaces_rerun_ops_and_keeps_the_rest(tmp_path):
    into = _folder(tmp_path / "data", grids.OPS, "first")
    rerun = _folder(tmp_path / "rerun", ["attn_prefill", "elementwise"], "second")
    assert merge(into, rerun) == ["attn_prefill", "elementwise"]
    for op in grids.OPS:
        tag = "second" if op in ("attn_prefill", "elementwise") else "first"
        assert _read(into / f"{op}.csv")[1][2] == tag
    win = _read(into / "windows.csv")
    assert win[0] == ["op", "backend", "shape", "pass", "time_s"]
    assert sorted((r[0], r[4]) for r in win[1:]) == sorted(
        (op, "second" if op in ("attn_prefill", "elementwise") else "first") for op in grids.OPS)
    prov = json.loads((into / "provenance.json").read_text())
    assert prov["date_utc"] == "first" and prov["peaks"] == {"x": 1}
    assert [r["date_utc"] for r in prov["reruns"]] == ["second"] and "peaks" not in prov["reruns"][0]
    assert (into / "run.rerun1.log").read_text() == "log second\n"
    assert (into / "run.log").read_text() == "log first\n"


@pytest.mark.parametrize("kw, msg", [({"device": "GPU Y"}, "device_name 'GPU Y', expected 'GPU X'"),
                                     ({"quick": True}, "--quick")])
def test_merge_refuses_another_gpu_or_a_quick_run_and_writes_nothing(tmp_path, kw, msg):
    into = _folder(tmp_path / "data", grids.OPS, "first")
    before = {p.name: p.read_bytes() for p in into.iterdir()}
    rerun = _folder(tmp_path / "rerun", ["elementwise"], "second", **kw)
    with pytest.raises(MergeError, match=msg):
        merge(into, rerun)
    assert {p.name: p.read_bytes() for p in into.iterdir()} == before


def test_merge_checks_columns_and_the_cli_reports_the_file(tmp_path, capsys):
    into = _folder(tmp_path / "data", grids.OPS, "first")
    rerun = _folder(tmp_path / "rerun", ["elementwise"], "second")
    _csv(rerun / "elementwise.csv", [["op", "time_s"], ["add", "1"]])
    assert main(["--into", str(into), "--rerun", str(rerun)]) == 2
    err = capsys.readouterr().err
    assert "elementwise.csv: columns ['op', 'time_s'], expected" in err
