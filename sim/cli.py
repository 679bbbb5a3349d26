"""The ``servesim`` command line: thin wrappers over the library.

Commands: ``run`` (one simulation), ``models`` and ``hardware`` (what ships), ``cost``
(op- and step-level predictions), ``trace`` (trace statistics), ``calibrate`` (fit profiles from
measurements). Every configuration problem is a one-line error and exit code 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from sim.cli_common import fail, guard
from sim.config import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="servesim: simulate LLM serving on GPUs you have not bought yet.")


_fail = fail
_guard = guard()


@app.command()
@_guard
def run(config: Path = typer.Argument(..., help="simulation YAML"),
        set_: List[str] = typer.Option([], "--set", help="override, e.g. --set engine.max_num_seqs=128 (value is YAML)"),
        out: Optional[Path] = typer.Option(None, "--out", help="write summary.json, requests/iterations parquet, resolved config"),
        json_: bool = typer.Option(False, "--json", help="print the summary as JSON"),
        plot: Optional[Path] = typer.Option(None, "--plot", help="write timeline.png and latency_cdf.png to this folder"),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="progress bar (default: on a terminal)"),
        replicates: Optional[int] = typer.Option(
            None, "--replicates", help="also run N cost-noise replicates (step prices scaled by draws of the profile's "
            "held-out residuals) and print p10/p50/p90 of the summary metrics across them")):
    """Run one simulation and print its summary."""
    from sim.config import load_config
    from sim.simulator import simulate

    cfg = load_config(config, set_ or None)
    if replicates is not None and replicates < 1:
        _fail(f"--replicates: expected an integer >= 1, got {replicates}")
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    cb = None
    if show:
        from tqdm import tqdm
        bar = tqdm(unit="req" if replicates is None else "run", desc="simulating", file=sys.stderr)

        def cb(n, total):
            bar.total = total
            bar.n = n
            bar.refresh()
    reps = None
    try:
        if replicates is None:
            res = simulate(cfg, cb)
        else:
            from sim.replicates import run_replicates
            reps = run_replicates(cfg, replicates, progress=cb)
            res = reps.base
    except ConfigError as e:
        raise (e if e.source else e.with_source(str(config))) from None
    finally:
        if bar is not None:
            bar.close()
    if out is not None:
        res.save(out)
        if reps is not None:
            reps.save(out)
    if plot is not None:
        from sim.metrics.plots import save_all
        save_all(res, plot)
    if json_:
        typer.echo(json.dumps({**res.summary(), **(reps.to_dict() if reps is not None else {})}, indent=2))
    else:
        for line in _pool_lines(res.info):
            typer.echo(line)
        typer.echo(res.format())
        if reps is not None:
            typer.echo(reps.format())
        if out is not None:
            typer.echo(f"results written to {out}/")


def _pool_lines(info: dict) -> list[str]:
    """What runs where: one line for a lone replica, one per pool for a cluster."""
    pools = info.get("pools") or []
    out = []
    for p in pools:
        par = "".join(f" x {k.upper()}{p[k]}" for k in ("tp", "pp") if p[k] > 1)
        what = (f"{p['model']} on {p['hardware']}{par} (efficiency: {p['efficiency_source'].split(':')[0]}), "
                f"KV capacity {p['kv_capacity_tokens_per_replica']:,} tokens")
        if len(pools) == 1 and p["num_replicas"] == 1:
            out.append(what)
        else:
            out.append(f"pool {p['name']}: {p['num_replicas']} x {what} per replica")
    return out


@app.command()
@_guard
def models(json_: bool = typer.Option(False, "--json")):
    """List the models that ship (or give a path to an HF config.json)."""
    from sim.model_spec import load_model, shipped_models

    rows = [load_model(n).summary() for n in shipped_models()]
    if json_:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'name':<16}{'params(B)':>10}{'weights(GB)':>12}{'KV(kB/tok)':>11}{'layers':>7}{'heads/kv':>10}")
    for r in rows:
        typer.echo(f"{r['name']:<16}{r['params_b']:>10.2f}{r['weight_gb']:>12.1f}{r['kv_kb_per_token']:>11.1f}"
                   f"{r['layers']:>7}{str(r['heads']) + '/' + str(r['kv_heads']):>10}")


@app.command()
@_guard
def hardware(json_: bool = typer.Option(False, "--json")):
    """List the GPU profiles that ship, with their datasheet peaks and calibration state."""
    from sim.hardware import load_hardware, shipped_hardware

    rows = []
    for n in shipped_hardware():
        h = load_hardware(n)
        rows.append({"name": n, "display_name": h.display_name, "memory_gb": round(h.memory_bytes / 1e9, 1),
                     "bandwidth_tb_per_s": h.memory_bandwidth_bytes_per_s / 1e12,
                     "bf16_tflops": h.peak_flops("bf16") / 1e12,
                     "fp8_tflops": h.peak_flops_per_s.get("fp8", 0) / 1e12 or None,
                     "calibrated": not h.efficiency_source.startswith("default"),
                     "link": h.interconnect.link if h.interconnect else None,
                     "max_gpus_per_node": h.interconnect.max_gpus_per_node if h.interconnect else 1,
                     "link_calibrated": bool(h.interconnect and h.interconnect.fits),
                     "usd_per_gpu_hour": h.price_usd_per_gpu_hour, "price_is_estimate": h.price_is_estimate,
                     "price_source": h.price_source})
    if json_:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'name':<14}{'memory(GB)':>11}{'HBM(TB/s)':>10}{'bf16(TF)':>9}{'fp8(TF)':>9}  calibrated  "
               f"{'link':<8}{'GPUs':>5}{'$/GPU-h':>9}  GPU")
    for r in rows:
        fp8 = f"{r['fp8_tflops']:.0f}" if r["fp8_tflops"] else "-"
        usd = "-" if r["usd_per_gpu_hour"] is None else \
            ("~" if r["price_is_estimate"] else "") + f"{r['usd_per_gpu_hour']:.2f}"
        typer.echo(f"{r['name']:<14}{r['memory_gb']:>11.1f}{r['bandwidth_tb_per_s']:>10.2f}{r['bf16_tflops']:>9.0f}"
                   f"{fp8:>9}  {'yes' if r['calibrated'] else 'no':<10}  {r['link'] or '-':<8}"
                   f"{r['max_gpus_per_node']:>5}{usd:>9}  {r['display_name']}")
    if any(r["price_is_estimate"] for r in rows):
        typer.echo("~ estimated price (see the profile's price.source)")


def _mount_optional() -> None:
    """Sub-apps that live in their own modules."""
    from sim import cli_cost
    app.add_typer(cli_cost.app, name="cost")
    try:
        from sim import cli_trace
        app.add_typer(cli_trace.app, name="trace")
    except ImportError:  # pragma: no cover - during development only
        pass
    try:
        from sim import cli_calibrate
        app.add_typer(cli_calibrate.app, name="calibrate")
    except ImportError:  # pragma: no cover
        pass


_mount_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
