"""``servesim trace``: inspect recorded traces (statistics table, JSON, plots).

Models: a thin CLI over :func:`sim.workload.traces.read_trace` and
:func:`sim.workload.traces.trace_stats`; ``stats FILE`` prints a table, one JSON object
(``--json``) or writes PNGs (``--plot DIR``). Errors print one line and exit with code 2.

Ignores: simulation; the main CLI mounts this app as ``servesim trace``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from sim.cli_common import fail

from sim.config import ConfigError, TraceSpec
from sim.rng import RngStreams

app = typer.Typer(help="Inspect LLM-serving request traces (Azure, Mooncake, ServeGen, ShareGPT, CSV/JSONL).",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _main() -> None:
    """Inspect LLM-serving request traces."""



def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(stats: dict) -> str:
    """Readable multi-line table of a trace_stats dict (per-minute counts summarized)."""
    lines = []
    for k, v in stats.items():
        if k == "requests_per_min":
            v = f"{len(v)} minutes, min {min(v)} / max {max(v)} requests per minute"
        elif isinstance(v, dict):
            v = ", ".join(f"{kk}={vv}" for kk, vv in v.items()) or "none"
        lines.append(f"{k:<24} {_fmt(v)}")
    return "\n".join(lines)


def write_plots(df, out_dir: Path) -> list[Path]:
    """Arrival rate per minute, and length histograms + CDFs; returns the PNG paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if "arrival_s" in df.columns and len(df) > 1:
        t = df["arrival_s"].to_numpy()
        counts = np.bincount(np.floor(t / 60.0).astype(np.int64))
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.step(np.arange(len(counts)), counts / 60.0, where="post")
        ax.set(xlabel="time (min)", ylabel="arrival rate (req/s, 1-min bins)", title="Arrival rate")
        fig.tight_layout()
        paths.append(out_dir / "arrival_rate.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    if "prompt_tokens" in df.columns:
        fig, axes = plt.subplots(2, 2, figsize=(9, 6))
        for j, col in enumerate(("prompt_tokens", "output_tokens")):
            x = np.sort(df[col].to_numpy())
            axes[0, j].hist(x, bins=60)
            axes[0, j].set(xlabel=col, ylabel="requests", title=f"{col} histogram")
            axes[1, j].plot(x, np.arange(1, len(x) + 1) / len(x))
            axes[1, j].set(xlabel=col, ylabel="CDF", xscale="log")
        fig.tight_layout()
        paths.append(out_dir / "lengths.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


@app.command()
def stats(
    file: str = typer.Argument(..., help="trace file or ServeGen folder"),
    format: str = typer.Option("auto", "--format", "-f", help="auto|azure|mooncake|servegen|sharegpt|arxiv|lengths|csv|jsonl"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write PNG plots into this folder"),
    column: list[str] = typer.Option([], "--column", help="csv/jsonl mapping FIELD=COLUMN (repeatable)"),
    start_s: float = typer.Option(0.0, "--start-s", help="window start (s)"),
    end_s: Optional[float] = typer.Option(None, "--end-s", help="window end (s); needed for ServeGen folders"),
    max_requests: Optional[int] = typer.Option(None, "--max-requests"),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="skip and count bad rows instead of failing"),
    seed: int = typer.Option(0, "--seed", help="seed for sampled traces (ServeGen)"),
) -> None:
    """Print statistics of a trace: rate, burstiness, length percentiles, prefix reuse."""
    from sim.workload.traces import read_trace, trace_stats

    try:
        cols = dict(c.split("=", 1) for c in column if "=" in c)
        if len(cols) != len(column):
            raise ConfigError("--column", "expected FIELD=COLUMN")
        spec = TraceSpec(path=file, format=format, columns=cols, start_s=start_s, end_s=end_s,
                         max_requests=max_requests, on_bad_row="skip" if skip_bad_rows else "error")
        df = read_trace(spec, ".", RngStreams(seed))
        st = trace_stats(df)
        st = {"file": file, "format": df.attrs.get("format"), **st}
        plots = write_plots(df, plot) if plot is not None else []
    except ConfigError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{file}: {e.strerror or e}")
    if as_json:
        typer.echo(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in st.items()}))
    else:
        typer.echo(format_table(st))
    for p in plots:
        typer.echo(f"wrote {p}", err=as_json)


if __name__ == "__main__":
    app()
