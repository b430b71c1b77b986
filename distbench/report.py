"""Figures and a table from a results directory, without Jupyter. The notebooks in analysis/ draw the
same figures with these functions.

    python -m distbench.report analysis/data --out report/
    python -m distbench.report --readme README.md     # the engines table, from analysis/data/engines.jsonl
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import matplotlib.pyplot as plt  # no backend forced: Agg when headless, inline in notebooks
import pandas as pd

from distbench.analysis import engine_table, load_runs, replace_block, summary_table, to_markdown

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
    b.set_xlim(0, 1.05 * p50.max())  # barh with `left` does not always widen the autoscaled limits
    b.set_xlabel("p50 step time (ms)")
    b.set_title("Where the step goes")
    b.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08 - 1.2 / (len(d) + 4)), ncol=2)
    fig.tight_layout()
    return fig


def fig_accuracy(df: pd.DataFrame) -> plt.Figure:
    """Top-1 against the fraction of conv weights learned: one line per data set, model, class count and
    head that was run at two or more fractions (single runs, e.g. short throughput runs, would only
    flatten the axis; their accuracy is in the table)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    keys = ["config.data.dataset", "config.model.model", "config.model.num_classes", "config.model.head"]
    if not df.empty:
        df = df.groupby(keys).filter(lambda g: g["params.conv_learned_fraction"].nunique() >= 2)
    if df.empty:
        _empty(ax, "runs at several learned fractions")
        return fig
    for (data, model, classes, head), group in df.groupby(keys):
        g = group.sort_values("params.conv_learned_fraction")
        label = f"{data}, {model}, C={classes:,}, {head} head"
        ax.plot(g["params.conv_learned_fraction"], 100 * g["accuracy.top1"], marker="o", label=label)
    ax.set_xlabel("fraction of conv weights learned")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy against what is trained")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def samples_per_class(df: pd.DataFrame) -> pd.Series:
    """Training samples each class was shown: (warm-up + timed steps) x batch x ranks / C (exact under the
    synthetic task's balanced class stream, whole epochs or not)."""
    steps = df["config.train.warmup_steps"] + df["config.train.steps"]
    return steps * df["config.train.batch_size"] * df["env.world_size"] / df["config.model.num_classes"]


def fig_large_classes(df: pd.DataFrame) -> plt.Figure:
    """Top-1 against the number of classes on the synthetic task: one line per model and head run at two
    or more class counts (every conv learned), and the Bayes-optimal oracle on the same held-out samples
    dashed. The oracle says how learnable the task is; the gap to it is the network's. Lines join each
    head's shortest run per class count; longer runs of the same head (more samples per class) are open
    markers labelled with their samples per class. Only records that carry an oracle are drawn (real data
    has none, and older synthetic records used an earlier task)."""
    fig, ax = plt.subplots(figsize=(7, 4.8))
    d = df.iloc[0:0]
    if "accuracy.oracle_top1" in df:
        d = df[df["accuracy.oracle_top1"].notna() & (df["params.conv_learned_fraction"] >= 1.0)]
    keys = ["config.model.model", "config.model.head"]
    if not d.empty:
        d = (
            d.assign(spc=samples_per_class(d))
            .groupby(keys)
            .filter(lambda g: g["config.model.num_classes"].nunique() >= 2)
        )
    if d.empty:
        _empty(ax, "synthetic runs at several class counts")
        return fig
    for i, ((model, head), group) in enumerate(d.groupby(keys)):
        g = group.sort_values(["config.model.num_classes", "spc"])
        first = g.groupby("config.model.num_classes").head(1)
        color = f"C{i % 10}"
        ax.plot(
            first["config.model.num_classes"],
            100 * first["accuracy.top1"],
            marker="o",
            color=color,
            label=f"{model}, {head} head",
        )
        for _, run in g.drop(first.index).iterrows():
            x, y = run["config.model.num_classes"], 100 * run["accuracy.top1"]
            ax.plot([x], [y], marker="o", mfc="none", color=color, linestyle="none")
            ax.annotate(f"{run['spc']:.0f}/class", (x, y), textcoords="offset points", xytext=(6, 2), fontsize=7)
    oracle = d.groupby("config.model.num_classes")["accuracy.oracle_top1"].mean()
    ax.plot(oracle.index, 100 * oracle, "k--", label="oracle (Bayes-optimal nearest code)")
    ax.set_xscale("log")
    ax.set_xlabel("classes")
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Heads at many classes (synthetic task, one seed)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def scaling_inputs(df: pd.DataFrame, model) -> pd.DataFrame:
    """Per run, what the projection needs, all measured: payload, compute time (p50 step time less the
    exposed communication) and the hidable window (the model's all-reduce time at the measured world
    size less the exposed part; assumed to carry over to more workers). Runs without an exposed time
    (DeepSpeed, --nosync-steps 0) are left out."""
    d = df[df["perf.exposed_comm_ms"].notna()].copy()
    if d.empty:
        return d
    exposed_s = d["perf.exposed_comm_ms"].clip(lower=0) / 1e3
    d["compute_s"] = d["perf.step_time_ms.p50"] / 1e3 - exposed_s
    t = [
        model.allreduce_time(p, int(n))
        for p, n in zip(d["comm.payload_bytes_per_step"], d["env.world_size"], strict=True)
    ]
    d["overlap_s"] = (pd.Series(t, index=d.index) - exposed_s).clip(lower=0).clip(upper=d["compute_s"])
    return d


def fig_scaling(df: pd.DataFrame, commbench: pd.DataFrame, links: tuple[float, ...] = (12.5e9,)) -> plt.Figure:
    """Projected step time and communication share from 8 to 4096 workers, for each run, on the fitted
    link (solid) and on what-if links of `links` bytes/s with the fitted latency (dashed)."""
    from distbench.costmodel import fit, project

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    if commbench.empty or df.empty:
        _empty(a, "collective benchmarks" if commbench.empty else "ok runs")
        _empty(b, "collective benchmarks" if commbench.empty else "ok runs")
        return fig
    model = fit(commbench.to_dict("records"), op="all_reduce", time_field="time_us_min")
    inputs = scaling_inputs(df, model)
    if inputs.empty:
        _empty(a, "runs with an exposed-communication time")
        _empty(b, "runs with an exposed-communication time")
        return fig
    for i, (_, run) in enumerate(inputs.iterrows()):
        color = f"C{i % 10}"
        proj = project(
            model,
            run["compute_s"],
            run["comm.payload_bytes_per_step"],
            overlap_s=run["overlap_s"],
            link_bandwidths=[model.beta, *links],
        )
        for j, (_, p) in enumerate(proj.groupby("link_bytes_per_s", sort=False)):
            style = "-" if j == 0 else "--"
            label = (
                f"{run['config.model.model']} C={run['config.model.num_classes']:,}: {run['variant']}"
                if j == 0
                else None
            )
            a.plot(p["workers"], 1e3 * p["step_s"], style, color=color, label=label)
            b.plot(p["workers"], 100 * p["comm_share"], style, color=color)
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers")
        ax.grid(alpha=0.3)
    a.set_ylabel("projected step time (ms)")
    b.set_ylabel("communication share of the step (%)")
    link_text = ", ".join(f"{bw / 1e9:g} GB/s" for bw in links)
    a.set_title(f"fitted link: alpha {model.alpha * 1e6:.0f} us, beta {model.beta / 1e9:.2f} GB/s")
    b.set_title(f"dashed: what-if links ({link_text}), same alpha")
    a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def load_commbench(path: str | os.PathLike) -> pd.DataFrame:
    from distbench.commbench import SCHEMA
    from distbench.results import load

    return load(path, schema=SCHEMA)


FIGURES = {
    "comm_savings": fig_comm_savings,
    "throughput": fig_throughput,
    "accuracy": fig_accuracy,
    "large_classes": fig_large_classes,
}


def write_report(results_dir: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = load_runs(results_dir)
    makers = {name: functools.partial(draw, df) for name, draw in FIGURES.items()}
    makers["scaling"] = functools.partial(fig_scaling, df, load_commbench(results_dir))  # + the collectives
    written = []
    for name, make in makers.items():
        fig = make()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    table = out / "summary.md"
    table.write_text(to_markdown(summary_table(df)) + "\n" if not df.empty else "no ok runs\n")
    written.append(table)
    return written


ENGINES_RECORDS = Path(__file__).resolve().parents[1] / "analysis" / "data" / "engines.jsonl"


def readme_engine_table(readme: str | os.PathLike, records: str | os.PathLike = ENGINES_RECORDS) -> bool:
    """Rewrite the README's engines table from the committed records; True if it changed."""
    path = Path(readme)
    text = path.read_text()
    new = replace_block(text, "engines-table", engine_table(load_runs(records)))
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distbench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", help="a results .jsonl file or a directory of them")
    p.add_argument("--out", help="directory for the PNGs and summary.md")
    p.add_argument("--readme", help="rewrite this README's engines table from analysis/data/engines.jsonl")
    args = p.parse_args(argv)
    if args.readme:
        print(f"{args.readme}: {'updated' if readme_engine_table(args.readme) else 'up to date'}")
        return 0
    if not args.results or not args.out:
        p.exit(2, "python -m distbench.report: error: give RESULTS and --out (or --readme README.md)\n")
    if not Path(args.results).exists():
        p.exit(2, f"python -m distbench.report: error: no such results file or directory: {args.results}\n")
    for path in write_report(args.results, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
