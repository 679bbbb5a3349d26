"""Merge a rerun of some ops into a calibration data folder.

  python -m calibrate.merge --into calibrate/data/h100_sxm --rerun /path/to/rerun_dir

A rerun is ``python -m calibrate.run --ops OP[,OP...] --out RERUN_DIR`` on the same GPU kind:
for each op it measured, its ``<op>.csv`` replaces the folder's, its rows of ``windows.csv``
replace the folder's rows of that op, and ``provenance.json`` keeps the first run's record with
a ``reruns`` list holding each rerun's own provenance (date, versions, clocks, checks, skips,
grid passes) and its ``run.log`` is kept as ``run.rerun<N>.log``.  ``op_seconds`` and ``wall_time_s`` at the top stay the first run's; the rerun's
are in its entry.  Needs no torch: it only moves files.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from . import grids


class MergeError(ValueError):
    pass


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MergeError(f"{path}: missing (expected the provenance.json the runner writes)") from None
    except json.JSONDecodeError as e:
        raise MergeError(f"{path}: not valid JSON ({e})") from None


def _check_header(path: Path, op: str) -> None:
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if header != grids.COLUMNS[op]:
        raise MergeError(f"{path}: columns {header}, expected {grids.COLUMNS[op]}")


def merge(into: str | Path, rerun: str | Path) -> list[str]:
    """Merge ``rerun`` into ``into``; returns the ops replaced.  Checks everything before it
    writes anything (same GPU, every op's CSV present with the runner's columns)."""
    into, rerun = Path(into), Path(rerun)
    prov, rprov = _read_json(into / "provenance.json"), _read_json(rerun / "provenance.json")
    ops = [o for o in rprov.get("ops", []) if (rerun / f"{o}.csv").exists()]
    if not ops:
        raise MergeError(f"{rerun}: no <op>.csv for the ops its provenance.json lists ({rprov.get('ops')})")
    for o in ops:
        if o not in grids.OPS:
            raise MergeError(f"{rerun}/provenance.json: ops: unknown op {o!r}, expected one of {grids.OPS}")
        _check_header(rerun / f"{o}.csv", o)
    if rprov.get("device_name") != prov.get("device_name"):
        raise MergeError(f"{rerun}/provenance.json: device_name {rprov.get('device_name')!r}, expected "
                         f"{prov.get('device_name')!r} (the GPU of {into})")
    if rprov.get("quick"):
        raise MergeError(f"{rerun}/provenance.json: a --quick run; merge only full grids")
    windows = _merged_windows(into / "windows.csv", rerun / "windows.csv", set(ops))
    for o in ops:
        shutil.copyfile(rerun / f"{o}.csv", into / f"{o}.csv")
    if windows is not None:
        with open(into / "windows.csv", "w", newline="") as f:
            csv.writer(f).writerows(windows)
    entry = {k: v for k, v in rprov.items() if k not in ("peaks",)}
    prov.setdefault("reruns", []).append(entry)
    if (rerun / "run.log").exists():  # the rerun's log beside the first run's run.log
        shutil.copyfile(rerun / "run.log", into / f"run.rerun{len(prov['reruns'])}.log")
    (into / "provenance.json").write_text(json.dumps(prov, indent=2, default=str) + "\n")
    return ops


def _merged_windows(dst: Path, src: Path, ops: set[str]) -> list[list[str]] | None:
    """``dst``'s window rows of other ops, then ``src``'s rows of ``ops`` (header first)."""
    rows: list[list[str]] = []
    header = None
    if dst.exists():
        with open(dst, newline="") as f:
            r = csv.reader(f)
            header = next(r, None)
            rows = [row for row in r if row and row[0] not in ops]
    if src.exists():
        with open(src, newline="") as f:
            r = csv.reader(f)
            h = next(r, None)
            if header is not None and h != header:
                raise MergeError(f"{src}: columns {h}, expected {header} (as in {dst})")
            header = header or h
            rows += [row for row in r if row and row[0] in ops]
    return None if header is None else [header] + rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--into", required=True, help="the data folder (calibrate/data/<gpu>)")
    p.add_argument("--rerun", required=True, help="the rerun's --out folder")
    a = p.parse_args(argv)
    try:
        ops = merge(a.into, a.rerun)
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged {', '.join(ops)} from {a.rerun} into {a.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
