"""Figures and a table from a results directory, without Jupyter. The notebooks in analysis/ draw the
same figures with these functions.

    python -m distbench.report analysis/data --out report/
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib.pyplot as plt  # no backend forced: Agg when headless, inline in notebooks
import pandas as pd

from distbench.analysis import load_runs, summary_table, to_markdown

MiB = 2**20


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in these results", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _label(df: pd.DataFrame) -> pd.Series:
    return df["config.model.model"] + " C=" + df["config.model.num_classes"].map("{:,}".format) + ": " + df["variant"]


def fig_comm_savings(df: pd.DataFrame) -> plt.Figure:
    """Payload (measured in the comm hook) against expected bytes per step, one bar per run."""
    d = df.sort_values(["config.model.model", "config.model.num_classes", "comm.payload_bytes_per_step"])
    fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(d), 4) + 1.2))
    if d.empty:
        _empty(ax, "ok runs")
        return fig
    y = range(len(d))
    ax.barh(y, d["comm.payload_bytes_per_step"] / MiB, color="tab:blue", label="payload (measured)")
    ax.scatter(d["comm.expected_bytes_per_step"] / MiB, y, color="black", marker="|", s=200, label="expected")
    ax.set_yticks(list(y), _label(d))
    ax.set_xlabel("gradient bytes per step (MiB)")
    ax.set_title("What each step sends")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def fig_throughput(df: pd.DataFrame) -> plt.Figure:
    """Samples/s and the step-time split (hidden vs exposed communication) per run."""
    d = df.sort_values(["config.model.model", "config.model.num_classes", "perf.samples_per_s"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.35 * max(len(d), 4) + 1.2), sharey=True)
    if d.empty:
        _empty(a, "ok runs")
        _empty(b, "ok runs")
        return fig
    y = list(range(len(d)))
    a.barh(y, d["perf.samples_per_s"], color="tab:green")
    a.set_yticks(y, _label(d))
    a.set_xlabel("samples/s (all ranks)")
    a.set_title("Throughput")
    p50 = d["perf.step_time_ms.p50"]
    exposed = d["perf.exposed_comm_ms"].fillna(0).clip(lower=0)
    b.barh(y, p50 - exposed, color="tab:gray", label="step without sync")
    b.barh(y, exposed, left=p50 - exposed, color="tab:red", label="exposed communication")
    b.set_xlabel("p50 step time (ms)")
    b.set_title("Where the step goes")
    b.legend(loc="lower right")
    fig.tight_layout()
    return fig


def fig_accuracy(df: pd.DataFrame) -> plt.Figure:
    """Top-1 against the fraction of conv weights learned, one line per head."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if df.empty:
        _empty(ax, "ok runs")
        return fig
    for (head, model), group in df.groupby(["config.model.head", "config.model.model"]):
        g = group.sort_values("params.conv_learned_fraction")
        ax.plot(g["params.conv_learned_fraction"], 100 * g["accuracy.top1"], marker="o", label=f"{model}, {head} head")
    ax.set_xlabel("fraction of conv weights learned")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy against what is trained")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


FIGURES = {"comm_savings": fig_comm_savings, "throughput": fig_throughput, "accuracy": fig_accuracy}


def write_report(results_dir: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = load_runs(results_dir)
    written = []
    for name, draw in FIGURES.items():
        fig = draw(df)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    for path in extra_figures(results_dir, df, out):
        written.append(path)
    table = out / "summary.md"
    table.write_text(to_markdown(summary_table(df)) + "\n" if not df.empty else "no ok runs\n")
    written.append(table)
    return written


def extra_figures(results_dir, df, out: Path) -> list[Path]:
    return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distbench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a results .jsonl file or a directory of them")
    p.add_argument("--out", required=True, help="directory for the PNGs and summary.md")
    args = p.parse_args(argv)
    if not Path(args.results).exists():
        p.exit(2, f"python -m distbench.report: error: no such results file or directory: {args.results}\n")
    for path in write_report(args.results, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
