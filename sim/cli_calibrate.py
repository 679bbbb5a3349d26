"""``servesim calibrate``: fit a hardware profile to calibrate/ measurements, report, model check.

Commands: ``fit DATA_DIR --out PROFILE.yaml [--base BASE.yaml]`` (kernel CSVs and/or the NCCL
times of ``nccl.csv``; with kernel CSVs the profile gets ``calibration.uncertainty`` too,
calibrate/fit_uncertainty.py), ``report DATA_DIR --profile PROFILE.yaml --out REPORT.md``,
``check-model MODEL_CHECK.csv --hardware PROFILE``.  The fitting
code lives in the repository's ``calibrate/`` folder (next to ``sim/``), not in the installed
package; this module puts the repository root on ``sys.path`` when needed.
Every input problem is a one-line error and exit code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from sim.cli_common import fail, guard

from sim.hardware import PROFILES_DIR, dump_profile, load_hardware

ROOT = Path(__file__).resolve().parent.parent
app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Fit hardware profiles from calibrate/ measurements (see docs/calibration.md).")



def _calibrate():
    """Import the repository's calibrate package (fit, report, compare_model)."""
    if (ROOT / "calibrate" / "fit.py").exists() and str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        import calibrate.compare_model
        import calibrate.fit
        import calibrate.report  # noqa: F401
    except ImportError as e:
        fail(f"the calibrate/ package is not available next to sim/ ({e})")
    return sys.modules["calibrate"]


def _errors() -> tuple[type[Exception], ...]:
    cal = _calibrate()
    return (cal.fit.FitError, cal.compare_model.CheckError)


_guard = guard(_errors)


@app.command()
@_guard
def fit(data_dir: Path = typer.Argument(..., help="calibrate/data/<gpu>/ with the runner's CSVs"),
        out: Path = typer.Option(..., "--out", help="profile YAML to write"),
        base: Optional[Path] = typer.Option(None, "--base", help="profile with the datasheet figures "
                                            "(default: hardware_profiles/<data folder name>.yaml)")):
    """Fit efficiency curves to measured kernel times (and, when DATA_DIR has nccl.csv, the
    interconnect to NCCL times); write a hardware profile."""
    from calibrate.fit import fit_profile
    from calibrate.fit_nccl import fit_interconnect
    from sim.config import read_yaml
    from sim.hardware import OP_KINDS, profile_from_dict
    if not data_dir.is_dir():
        fail(f"{data_dir}: no such directory")
    if base is None:
        base = PROFILES_DIR / f"{data_dir.resolve().name}.yaml"
        if not base.exists():
            fail(f"no base profile {base.name} in hardware_profiles/ for data folder '{data_dir.name}'; pass --base")
    has_nccl = (data_dir / "nccl.csv").exists()
    kernels = any((data_dir / f"{k}.csv").exists() for k in OP_KINDS)
    if has_nccl and not kernels:
        if not base.exists():
            fail(f"{base}: no such base profile")
        d = dict(read_yaml(base))  # NCCL data only: the base profile's efficiency curves stay as they are
    else:
        from calibrate.fit_uncertainty import add_uncertainty
        held: list = []
        d = fit_profile(data_dir, base, heldout=held)
        # held-out residuals -> calibration.uncertainty (prediction intervals, cost-noise replicates)
        add_uncertainty(d, held, data_dir, str(out))
    if has_nccl:
        d["interconnect"] = fit_interconnect(data_dir, d.get("interconnect"), str(base))
        profile_from_dict(d, str(out))  # the written section must load (ConfigError: one line, exit 2)
    src = (d.get("efficiency") or {}).get("source", "default")
    out.parent.mkdir(parents=True, exist_ok=True)
    head = (f"datasheet figures + efficiency curves fitted by `servesim calibrate fit` ({src})" if kernels else
            f"{base.name} with its interconnect fitted by `servesim calibrate fit` to {data_dir.name}/nccl.csv")
    out.write_text(f"# {d['display_name']}: {head}.\n" + dump_profile(d))
    typer.echo(f"wrote {out}  ({src})")
    if has_nccl:
        c = d["interconnect"]["calibrated"]
        typer.echo(f"interconnect: {d['interconnect']['link']} fitted to {c['data']}/nccl.csv: {c['points']} points, "
                   f"held-out median {c['heldout_median_abs_pct_err']}%, p90 {c['heldout_p90_abs_pct_err']}%")
        for f in d["interconnect"]["fitted"]:
            typer.echo(f"  {f['op']:11s} {f['world_size']} GPUs: {len(f['lines'])} line(s), held-out median "
                       f"{f['heldout_median_abs_pct_err']}%, p90 {f['heldout_p90_abs_pct_err']}%")
    if not kernels:
        return
    unc = d["calibration"].get("uncertainty", {})
    typer.echo(f"calibration.uncertainty: held-out residuals of {sum(len(k) for k in unc.get('ops', {}).values())} "
               f"(backend, op) groups" + (f"; step-level term from {unc['step']['data']}" if "step" in unc else ""))
    typer.echo(f"{'op':14s}{'backend':9s}{'points':>7s}{'cf':>7s}{'bf':>7s}{'held-out med%':>15s}{'p90%':>7s}")
    for be, ops in d["efficiency"]["backends"].items():
        for kind, c in ops.items():
            f = c.get("fit", {})
            if "points" not in f:
                continue
            typer.echo(f"{kind:14s}{be:9s}{f['points']:>7d}{c['compute_frac']:>7.3f}{c['bandwidth_frac']:>7.3f}"
                       f"{f.get('heldout_median_abs_pct_err', '-'):>15}{f.get('heldout_p90_abs_pct_err', '-'):>7}")
            if "warning" in f:
                typer.echo(f"  warning: {kind}/{be}: {f['warning']}", err=True)


@app.command()
@_guard
def report(data_dir: Path = typer.Argument(..., help="calibrate/data/<gpu>/"),
           profile: str = typer.Option(..., "--profile", help="fitted profile (name or YAML path)"),
           out: Path = typer.Option(Path("calibrate/REPORT.md"), "--out", help="markdown file to write")):
    """Write a markdown report (errors, fitted fractions, plots) of a profile vs its measurements."""
    from calibrate.report import write_report
    if not data_dir.is_dir():
        fail(f"{data_dir}: no such directory")
    hw = load_hardware(profile)
    p = write_report(data_dir, hw, out)
    typer.echo(f"wrote {p} and {p.parent / (p.stem + '_plots')}/")


@app.command("check-model")
@_guard
def check_model_cmd(csv: Path = typer.Argument(..., help="model_check.csv (or its folder)"),
                    hardware: str = typer.Option(..., "--hardware", help="profile name or YAML path"),
                    model: str = typer.Option("llama-3.1-8b", "--model", help="model whose dims were measured"),
                    backend: Optional[str] = typer.Option(None, "--backend", help="vendor | triton")):
    """Compare measured HF Llama step times with the simulator's step time; fit host overhead."""
    from calibrate.compare_model import check_model, format_check
    hw = load_hardware(hardware)
    typer.echo(format_check(check_model(csv, hw, model, backend)))
