"""Figures and a table from a results directory, without Jupyter. The notebooks in analysis/ draw the
same figures with these functions.

    distbench report analysis/data --out report/
    distbench report --plan-figure analysis/figures/planner.png
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
from pathlib import Path

import matplotlib.pyplot as plt  # no backend forced: Agg when headless, inline in notebooks
import pandas as pd
from matplotlib.ticker import ScalarFormatter

from distbench.results.analysis import (
    engine_table,
    head_scaling,
    head_scaling_markdown,
    heads_markdown,
    lm_heads,
    lm_heads_markdown,
    load_runs,
    setting_columns,
    studies,
    summary_table,
    to_markdown,
)

MB = 1e6


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in these results", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _label(df: pd.DataFrame, apart: bool = True) -> pd.Series:
    """'tiny C=100,000: fixed head'; a tiny CNN built at another feature width says so ('tiny N=128 ...'), and
    (`apart`) runs that would read the same say the settings that set them apart ('... (steps 6,395)', a study's
    longer line; '(lr 0.003)', a learning-rate check)."""
    model = df["config.model.model"]
    if "config.model.width" in df:
        width = df["config.model.width"]
        model = model + width.map(lambda w: "" if w is None or pd.isna(w) else f" N={int(w)}")
    label = model + " C=" + df["config.model.num_classes"].map("{:,}".format) + ": " + df["variant"]
    same = label.duplicated(keep=False).to_numpy()
    if not apart or not same.any():
        return label
    plain = label.tolist()  # by position: the frame's index may repeat (studies concatenated)
    texts = list(plain)
    settings = [*setting_columns(df), *(c for c in ("config.train.until_flat",) if c in df)]
    for text in set(label[same]):
        rows = [i for i, t in enumerate(plain) if t == text]
        group = df.iloc[rows]
        varying = [c for c in settings if group[c].map(repr).nunique() > 1]
        for i, (_, run) in zip(rows, group.iterrows(), strict=True):
            what = ", ".join(f"{c.rsplit('.', 1)[-1]} {_shown(run[c])}" for c in varying)
            texts[i] += f" ({what})" if what else ""
    return pd.Series(texts, index=label.index)


def _shown(value) -> str:
    """A setting's value in a label: 6,395 steps, lr 0.0003, amp True, optimizer adamw; '-' where unset."""
    if isinstance(value, bool | str) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if value != value:  # NaN: a setting this run's record does not have
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


def fig_comm_savings(df: pd.DataFrame) -> plt.Figure:
    """Payload (measured in the comm hook) against expected bytes per step, one bar per model, class count,
    data set and variant (bytes depend on nothing else: repeats of a configuration in several studies are one
    bar). A log axis: a fixed head's 0.25 MB and a learned head's 200 MB are both read off it."""
    keys = ["config.data.dataset", "config.model.model", "config.model.width", "config.model.num_classes", "variant"]
    d = df.drop_duplicates([k for k in keys if k in df], keep="last") if not df.empty else df
    d = (
        d.sort_values(["config.model.model", "config.model.num_classes", "comm.payload_bytes_per_step"])
        if len(d)
        else d
    )
    fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(d), 4) + 1.2))
    if d.empty:
        _empty(ax, "ok runs")
        return fig
    y = range(len(d))
    ax.barh(y, d["comm.payload_bytes_per_step"] / MB, color="tab:blue", label="payload (measured)")
    ax.scatter(d["comm.expected_bytes_per_step"] / MB, y, color="black", marker="|", s=200, label="expected")
    labels = _label(d, apart=False)  # one bar per configuration: bytes depend on nothing that sets runs apart
    if d["config.data.dataset"].nunique() > 1:
        labels = d["config.data.dataset"] + " " + labels
    ax.set_yticks(list(y), labels)
    ax.set_xscale("log")
    ax.set_xlim(d["comm.payload_bytes_per_step"].min() / MB / 10, d["comm.payload_bytes_per_step"].max() / MB * 3)
    ax.set_xlabel("gradient bytes per step (MB, log scale)")
    ax.set_title("What each step sends")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.set_axisbelow(True)
    fig.tight_layout()
    return fig


RANK_PARTS = (("compute_ms", "tab:gray", "compute (forward, backward to its last bucket)"),
              ("wait_ms", "tab:red", "wait for the collectives"),
              ("optimizer_ms", "tab:olive", "optimizer"))  # fmt: skip


def fig_throughput(df: pd.DataFrame, study: str = "") -> plt.Figure:
    """One study's runs (pass one results file's: `analysis.studies`): each variant's speed-up over its own
    baseline from the same study (samples/s over the learned head's with the same settings; whisker: the same
    ratio from the variant's p90 step against the baseline's p50, to its p50 against the baseline's p90), and
    where each rank's step goes (p50 over the timed steps of compute, wait and optimizer, `perf.ranks`; runs
    recorded before it: the step without sync and the exposed communication)."""
    d = df.sort_values(["config.model.model", "config.model.num_classes", "variant"]) if not df.empty else df
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 0.45 * max(len(d), 4) + 1.6), sharey=True)
    if d.empty:
        _empty(a, "ok runs")
        _empty(b, "ok runs")
        return fig
    y = list(range(len(d)))
    speedup = d["speedup"]
    known = speedup.notna()
    lo = d["base_step_p50"] / d["perf.step_time_ms.p90"]
    hi = d["base_step_p90"] / d["perf.step_time_ms.p50"]
    a.barh([v for v, k in zip(y, known, strict=True) if k], speedup[known], color="tab:green")
    a.errorbar(speedup[known], [v for v, k in zip(y, known, strict=True) if k], fmt="none", ecolor="black",
               xerr=[(speedup - lo).clip(lower=0)[known], (hi - speedup).clip(lower=0)[known]], capsize=2)  # fmt: skip
    for v in (v for v, k in zip(y, known, strict=True) if not k):
        a.text(0.02, v, "no baseline in this study", va="center", fontsize=7, transform=a.get_yaxis_transform())
    a.axvline(1, color="black", linewidth=0.8)
    a.set_yticks(y, _label(d))
    a.set_xlabel("speed-up over the learned head (samples/s ratio)")
    a.set_title("Speed-up, same study, same settings")
    handles, right = {}, 0.0
    for v, (_, run) in zip(y, d.iterrows(), strict=True):
        ranks = run.get("perf.ranks")
        if isinstance(ranks, list) and ranks and ranks[0].get("compute_ms") is not None:
            height = 0.8 / len(ranks)
            for i, r in enumerate(ranks):
                left, at = 0.0, v - 0.4 + height * (i + 0.5)
                for key, color, label in RANK_PARTS:
                    value = r.get(key) or 0.0
                    handles[label] = b.barh(at, value, height=height * 0.9, left=left, color=color)
                    left += value
                right = max(right, left)
        else:
            p50 = run["perf.step_time_ms.p50"]
            exposed = run.get("perf.exposed_comm_ms")
            exposed = max(exposed, 0.0) if exposed is not None and not pd.isna(exposed) else 0.0
            handles["step without sync (records before perf.ranks)"] = b.barh(v, p50 - exposed, color="silver")
            handles["exposed communication (p50 minus no-sync p50)"] = b.barh(
                v, exposed, left=p50 - exposed, color="salmon"
            )
            right = max(right, p50)
    b.set_xlim(0, 1.05 * right)  # barh with `left` does not always widen the autoscaled limits
    b.set_xlabel("ms per step (p50 over the timed steps; one bar per rank)")
    b.set_title("Where each rank's step goes")
    fig.suptitle(f"Throughput: {study}" if study else "Throughput")
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def fig_buckets(df: pd.DataFrame) -> plt.Figure:
    """Bytes per bucket (`comm.buckets`, in the order they are sent), learned against the other heads: the
    largest model and class count whose results hold a learned head and another variant with buckets. Bars
    name each bucket's first and last parameter; a log axis, since a head's bucket can be 1000x a conv's."""
    fig, ax = plt.subplots(figsize=(10, 5))
    d = (
        df[df["comm.buckets"].map(lambda b: isinstance(b, list) and len(b) > 0)]
        if "comm.buckets" in df
        else df.iloc[0:0]
    )
    keys = ["config.model.model", "config.model.num_classes"]
    pairs = (
        d.groupby(keys).filter(lambda g: (g["config.model.head"] == "learned").any() and len(g) > 1) if len(d) else d
    )
    if pairs.empty:
        _empty(ax, "learned and fixed runs with comm.buckets")
        return fig
    (model, classes), g = max(pairs.groupby(keys), key=lambda kv: (kv[0][1], kv[0][0]))
    g = g.drop_duplicates("variant", keep="last").sort_values("comm.payload_bytes_per_step", ascending=False)
    rows, labels, colors = [], [], []
    for i, (_, run) in enumerate(g.head(4).iterrows()):
        for j, bucket in enumerate(run["comm.buckets"]):
            rows.append(bucket["bytes"] / MB)
            names = f"{bucket['first']} .. {bucket['last']}" if bucket.get("first") else bucket["op"]
            labels.append(f"{run['variant']}  #{j}: {names}")
            colors.append(f"C{i}")
    y = list(range(len(rows)))[::-1]
    ax.barh(y, rows, color=colors)
    for v, size in zip(y, rows, strict=True):
        ax.annotate(f"{size:,.3g} MB", (size, v), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(min(rows) / 10, max(rows) * 5)  # a log axis has no zero: start a decade below the smallest
    ax.set_xlabel("bytes per step (MB, log scale)")
    ax.set_title(f"What each bucket sends: {model}, C={classes:,}")
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.set_axisbelow(True)
    fig.tight_layout()
    return fig


def fig_accuracy(df: pd.DataFrame) -> plt.Figure:
    """Top-1 against the fraction of conv weights learned: one line per data set, model, class count and
    head that was run at two or more fractions (single runs, e.g. short throughput runs, would only
    flatten the axis; their accuracy is in the table). Runs of other weight structures on a data set that
    has a line (a freeze rule along another dimension, a parameterisation, another model) are points
    beside it, labelled."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    keys = ["config.data.dataset", "config.model.model", "config.model.num_classes", "config.model.head"]
    plain = df
    if not df.empty:
        dims = df.get("config.freeze.freeze_dim", pd.Series("out", index=df.index)).fillna("out")
        plain = df[(dims == "out") & (df["config.model.param"].fillna("none") == "none")]
        plain = plain.groupby(keys).filter(lambda g: g["params.conv_learned_fraction"].nunique() >= 2)
    if plain.empty:
        _empty(ax, "runs at several learned fractions")
        return fig
    for (data, model, classes, head), group in plain.groupby(keys):
        g = group.sort_values("params.conv_learned_fraction")
        label = f"{data}, {model}, C={classes:,}, {head} head"
        ax.plot(g["params.conv_learned_fraction"], 100 * g["accuracy.top1"], marker="o", label=label)
    lines = plain[keys[0]].unique()
    others = df[df[keys[0]].isin(lines) & ~df.index.isin(plain.index)]
    for _, run in others.iterrows():
        x, y = run["params.conv_learned_fraction"], 100 * run["accuracy.top1"]
        ax.plot([x], [y], marker="D", color="black", markersize=4, linestyle="none")
        text = str(run["variant"]).removeprefix(f"{run['config.model.head']} head").strip(", ") or "baseline"
        if run["config.model.model"] not in plain[keys[1]].values:
            text = f"{run['config.model.model']}: {text}"
        ax.annotate(text, (x, y), xytext=(4, -3), textcoords="offset points", fontsize=6.5)
    if len(others):
        ax.set_xlim(right=1.35)  # room for the labels of points at 1.0
    ax.set_xlabel("fraction of conv weights learned")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy against what is trained" + (" (diamonds: other weight structures)" if len(others) else ""))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def fig_price_of_fixing(df: pd.DataFrame) -> plt.Figure:
    """The price of fixing the head (issue 24's study): learned minus best fixed top-1, in points, against C / N
    (left) and against C x N / backbone parameters (middle), one line per body and feature width N: at each C
    the best of the fixed heads trained longest, against the learned head at the same samples per class. Right:
    the learning curves behind the largest C of each body and N, the learned head's solid and that best fixed
    head's dashed, so that a gap can be told from a head still rising. Only runs of the head-scaling study should
    be passed in (`distbench report` gives it head_scaling.jsonl alone)."""
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.6))
    middle.sharey(left)
    table = head_scaling(df) if not df.empty and "accuracy.curve" in df else pd.DataFrame()
    fixed = table[table["head_label"] != "learned"] if not table.empty else table
    if fixed.empty:
        for ax in (left, middle, right):
            _empty(ax, "learned and fixed runs of the head-scaling study")
        return fig
    # per body, N and C: the fixed heads trained longest (the study's longer lines), the best of them
    longest = fixed[fixed["spc"] == fixed.groupby(["body", "N", "C"])["spc"].transform("max")]
    best = longest.loc[longest.groupby(["body", "N", "C"])["accuracy.top1"].idxmax()]
    curves = df.set_index("run_id")["accuracy.curve"]
    for i, ((body, n), group) in enumerate(best.groupby(["body", "N"])):
        g = group.sort_values("C")
        style = {"color": f"C{i % 10}", "marker": "o" if body == "tiny" else "s"}
        left.plot(g["c_over_n"], g["gap"], label=f"{body}, N = {n}", **style)
        middle.plot(g["capacity"], g["gap"], linestyle="none", **style)
        top = g.iloc[-1]  # its gap was read against `learned_run`, whose curve is drawn beside it
        # no learned run at this C (yet): the table has NaN there, which pandas may hold in a str column
        baseline = top["learned_run"] if isinstance(top["learned_run"], str) else None
        pair = ([(baseline, "-")] if baseline else []) + [(top["run_id"], "--")]
        for j, (run_id, line) in enumerate(pair):
            x = [p["samples_per_class"] for p in curves[run_id]]
            y = [100 * p["top1"] for p in curves[run_id]]
            right.plot(x, y, linestyle=line, color=style["color"], marker=".",
                       label=None if j else f"{body}, N = {n}, C = {top['C']:,}")  # fmt: skip
    for ax, xlabel in ((left, "C / N (classes per feature)"), (middle, "C x N / backbone parameters")):
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.grid(alpha=0.3)
    left.set_ylabel("learned minus best fixed head, top-1 (points)")
    left.legend(fontsize=7, title="best fixed head per C (longest trained)", title_fontsize=7)
    right.set_xscale("log")
    right.set_xlabel("samples per class seen")
    right.set_ylabel("top-1 (%)")
    right.grid(alpha=0.3)
    right.legend(fontsize=7, title="largest C: learned (solid), best fixed (dashed)", title_fontsize=7)
    fig.suptitle("The price of fixing the head: synthetic task, the fixed heads at the same samples per class per C, "
                 "one seed")  # fmt: skip
    fig.tight_layout()
    return fig


def fig_lm_heads(df: pd.DataFrame, title: str = "synthetic text") -> plt.Figure:
    """Language-model heads (issue 27's study): held-out loss (top row) and next-token top-1 (bottom row) against
    target tokens seen per vocabulary entry, one column per vocabulary size and a line per head (the longest run
    of each: a line run until flat may go on past the others), the task's entropy rate and Bayes-optimal top-1
    dashed where they are known; the last column sets what each head sends per step against what it costs, its
    loss and top-1 against the learned head's, at the largest budget every head of that V has run to (`matched`).
    Pass only the runs of one study (`distbench report` gives it its own file)."""
    table = lm_heads(df) if not df.empty else pd.DataFrame()
    sizes = sorted(table["V"].unique()) if not table.empty else []
    cols = len(sizes) + 1
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 7.6), squeeze=False)
    if table.empty:
        _empty(axes[0][0], "language-model runs with learning curves")
        return fig
    longest = table.sort_values("tokens_per_entry").drop_duplicates(["V", "head_label"], keep="last")
    runs = df.set_index("run_id")
    colors = {h: f"C{i}" for i, h in enumerate(sorted(longest["head_label"].unique()))}
    for i, v in enumerate(sizes):
        own = longest[longest["V"] == v].sort_values("head_label")
        for (ax, key, scale), oracle in zip(
            ((axes[0][i], "eval_loss", 1), (axes[1][i], "top1", 100)),
            (runs.loc[own["run_id"], "accuracy.oracle_loss"], runs.loc[own["run_id"], "accuracy.oracle_top1"]),
            strict=True,
        ):
            for _, row in own.iterrows():
                curve = runs.at[row["run_id"], "accuracy.curve"]
                x = [p["samples_per_class"] for p in curve]
                y = [scale * p[key] if p.get(key) is not None else float("nan") for p in curve]
                ax.plot(x, y, marker=".", color=colors[row["head_label"]], label=row["head_label"])
            if oracle.notna().any():
                ax.axhline(scale * oracle.dropna().mean(), color="black", linestyle="--", linewidth=1, label="oracle")
            ax.set_xscale("log", base=2)  # a doubling of tokens, which the flat rule judges, is one step right
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.grid(alpha=0.3)
        axes[0][i].set_title(f"V = {v:,}")
        axes[1][i].set_xlabel("target tokens per vocabulary entry")
    axes[0][0].set_ylabel("held-out loss (nats / token)")
    axes[1][0].set_ylabel("next-token top-1 (%)")
    axes[0][0].legend(fontsize=7)
    at = matched(table)
    for ax, y, label in (
        (axes[0][-1], at["loss_vs_learned"], "loss minus the learned head's (nats / token)"),
        (axes[1][-1], at["gap"], "learned head's top-1 minus this head's (points)"),
    ):
        for (_, row), value in zip(at.iterrows(), y, strict=True):
            ax.plot([row["mb_per_step"]], [value], marker="o", color=colors[row["head_label"]])
            ax.annotate(f"{row['V'] // 1024}K at {row['tokens_per_entry']:,.0f}", (row["mb_per_step"], value),
                        xytext=(4, 2), textcoords="offset points", fontsize=7)  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][-1].set_title(
        "what a head saves against what it costs,\nat the tokens per entry every head has run", fontsize=10
    )
    axes[1][-1].set_xlabel("bytes sent per step and rank (MB)")
    fig.suptitle(f"Language-model heads, gpt-tiny on {title}, one seed\ncurves: every head sees the same tokens, "
                 "each line to where it ended (lines run until flat go on past the others)")  # fmt: skip
    fig.tight_layout()
    return fig


def matched(table: pd.DataFrame) -> pd.DataFrame:
    """One row per head and V (of `analysis.lm_heads`): its line at the largest tokens per entry that every head
    of that V has a line at, so that the heads compared have seen the same tokens; where they share none, each
    head's longest line (the figure labels every point with its tokens per entry)."""
    rows = []
    for _, own in table.sort_values("tokens_per_entry", kind="stable").groupby("V"):
        budgets = set.intersection(*(set(g["tokens_per_entry"]) for _, g in own.groupby("head_label")))
        at = own[own["tokens_per_entry"] == max(budgets)] if budgets else own
        rows.append(at.drop_duplicates("head_label", keep="last"))
    return pd.concat(rows) if rows else table.iloc[0:0]


# The README's planner figure: one panel per model and class count, the heads that matter there.
PLAN_SPECS: tuple[tuple[str, int], ...] = (("resnet50", 1_000), ("resnet50", 100_000), ("resnet50", 1_000_000))
PLAN_HEADS: tuple[str, ...] = ("learned", "fixed", "sharded")
PLAN_GPUS: tuple[int, ...] = tuple(2**k for k in range(3, 13))  # 8 .. 4096


def plan_grid(specs=PLAN_SPECS, heads=PLAN_HEADS, gpus=PLAN_GPUS, cluster: str = "h100-ib-ndr") -> list[dict]:
    """Planner rows (`distbench.perfmodel.plan.plan`) for each (model, classes) of `specs`."""
    from distbench.perfmodel.plan import plan

    return [row for model, classes in specs for row in plan(model, classes, list(heads), list(gpus), cluster)]


def fig_plan(rows: list[dict], title: str = "", value: str = "step_ms") -> plt.Figure:
    """Small multiples from planner rows: one panel per group (model and class count), one line per head
    or variant over the GPU counts, each labelled at its end with its speed-up over the baseline at the
    largest count. `value` is the row field drawn (step_ms, samples_per_s, comm_share, ...)."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.2 * max(len(groups), 1), 3.6), squeeze=False)
    if not rows:
        _empty(axes[0][0], "planner rows")
        return fig
    ylabel = {"step_ms": "predicted step time (ms)", "samples_per_s": "predicted samples/s",
              "comm_share": "communication share of the step"}.get(value, value)  # fmt: skip
    for ax, group in zip(axes[0], groups, strict=True):
        mine = [r for r in rows if r["group"] == group]
        ends = []  # (y, text, colour) of each line's label, placed once the axis range is known
        for i, head in enumerate(dict.fromkeys(r["head"] for r in mine)):
            line = sorted((r for r in mine if r["head"] == head), key=lambda r: r["gpus"])
            x, y = [r["gpus"] for r in line], [r[value] for r in line]
            ax.plot(x, y, "-o", color=f"C{i}", markersize=3)
            speed = line[-1]["speedup_vs_learned"]
            shown = speed is not None and speed != 1.0  # the baseline's own is exactly 1
            ends.append([y[-1], head.removesuffix(" head") + (f" {speed:.2f}x" if shown else ""), f"C{i}"])
        gpus = sorted({r["gpus"] for r in mine})
        ax.set_xscale("log", base=2)
        ax.set_xticks(gpus, [f"{g:,}" if i % 3 == 0 or g == gpus[-1] else "" for i, g in enumerate(gpus)])
        ax.set_xlim(gpus[0] / 1.3, gpus[-1] * 12)  # room for the labels on the right
        ax.set_ylim(bottom=0)
        gap = 0.07 * ax.get_ylim()[1]  # labels closer than this are pushed apart, upwards
        ends.sort(key=lambda e: e[0])
        for below, above in itertools.pairwise(ends):
            above[0] = max(above[0], below[0] + gap)
        for y, text, colour in ends:
            ax.annotate(text, (gpus[-1], y), xytext=(5, 0), textcoords="offset points", color=colour, va="center",
                        fontsize=8)  # fmt: skip
        ax.set_xlabel("GPUs")
        ax.set_title(group, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def fig_plan_records(df_path: str | os.PathLike, cluster: str = "h100-ib-ndr", gpus=PLAN_GPUS) -> plt.Figure:
    """The planner on a results directory's own runs (measured compute and overlap), one panel per model and
    class count."""
    from distbench.perfmodel.plan import plan_records

    rows, _ = plan_records(df_path, list(gpus), cluster)
    return fig_plan(
        rows, f"runs from {df_path}: measured compute, all-reduce on {cluster} (distbench.perfmodel.plan --records)"
    )


def load_commbench(path: str | os.PathLike) -> pd.DataFrame:
    from distbench.perfmodel.commbench import SCHEMA
    from distbench.results import load

    return load(path, schema=SCHEMA)


FIGURES = {
    "comm_savings": fig_comm_savings,
    "buckets": fig_buckets,
    "accuracy": fig_accuracy,
    "head_scaling": fig_price_of_fixing,
    "lm_heads": fig_lm_heads,
    "lm_corpus": functools.partial(fig_lm_heads, title="the Python standard library (BPE)"),
}
# A figure that shows one study draws that study's records alone (the file its grid writes), where the results
# directory has it: runs of other studies at the same class counts (short timing runs) would read as results.
STUDIES = {
    "accuracy": "fashion_mnist.jsonl",
    "head_scaling": "head_scaling.jsonl",
    "lm_heads": "lm_heads.jsonl",
    "lm_corpus": "lm_corpus.jsonl",
}
# Studies of accuracy over many class counts of one small model, and learning-rate checks: their bytes add a bar
# per class count or rate and say nothing the bytes studies do not, so the bytes figures and the summary table
# leave them out.
ACCURACY_ONLY = ("head_scaling.jsonl", "head_scaling_lr.jsonl", "lm_heads_lr.jsonl")


def write_report(results_dir: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    here = Path(results_dir)
    if here.is_dir() and any((here / f).is_file() for f in STUDIES.values()):
        # A directory of studies: a study's figure draws its own file (nothing where it has not run yet); the
        # bytes figures and the table every file but the accuracy-scaling studies.
        kept = [f for f in sorted(here.glob("*.jsonl")) if f.name not in ACCURACY_ONLY]
        catalogue = load_runs(kept) if kept else pd.DataFrame()

        def records_of(name: str) -> pd.DataFrame:
            own = here / STUDIES[name]
            return load_runs(own) if own.is_file() else catalogue.iloc[0:0]
    else:  # an ad-hoc directory or file: drawn whole
        catalogue = load_runs(results_dir)

        def records_of(name: str) -> pd.DataFrame:
            return catalogue

    makers = {
        name: functools.partial(draw, records_of(name) if name in STUDIES else catalogue)
        for name, draw in FIGURES.items()
    }
    # Throughput compares runs of one study with each other alone (one figure per results file).
    for study, runs in studies(results_dir).items():
        makers[f"throughput-{study.replace('/', '-')}"] = functools.partial(fig_throughput, runs, study)
    makers["scaling"] = functools.partial(fig_plan_records, results_dir)  # the planner on these runs
    written = []
    for name, make in makers.items():
        fig = make()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    table = out / "summary.md"
    table.write_text(to_markdown(summary_table(catalogue)) + "\n" if not catalogue.empty else "no ok runs\n")
    written.append(table)
    return written


ENGINES_RECORDS = Path(__file__).resolve().parents[2] / "analysis" / "data" / "engines.jsonl"


ENGINES_PAGE = Path(__file__).resolve().parents[2] / "docs" / "engines.md"


def engines_block(records: str | os.PathLike = ENGINES_RECORDS) -> str:
    """docs/engines.md's "What each engine sends" table, from the committed records."""
    return engine_table(load_runs(records))


HEAD_SCALING_RECORDS = ENGINES_RECORDS.with_name("head_scaling.jsonl")
HEADS_RECORDS = ENGINES_RECORDS.with_name("heads.jsonl")


def heads_block(records: str | os.PathLike = HEADS_RECORDS) -> str:
    """docs/results.md's head comparison table, from the committed records."""
    return heads_markdown(load_runs(records))


def head_scaling_block(records: str | os.PathLike = HEAD_SCALING_RECORDS) -> str:
    """docs/results.md's head-scaling table, from the committed records."""
    return head_scaling_markdown(head_scaling(load_runs(records)))


LM_PAGE_BLOCKS = {
    "lm-heads-table": "lm_heads.jsonl",
    "lm-corpus-table": "lm_corpus.jsonl",
    "lm-lr-table": "lm_heads_lr.jsonl",
}


def lm_block(name: str) -> str:
    """docs/language-models.md's table `name` (a key of LM_PAGE_BLOCKS), from the committed records (a line
    saying so where a study has none yet)."""
    records = ENGINES_RECORDS.with_name(LM_PAGE_BLOCKS[name])
    if not records.is_file():
        return f"No records yet (`analysis/data/{records.name}`)."
    return lm_heads_markdown(lm_heads(load_runs(records)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="distbench report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", help="a results .jsonl file or a directory of them")
    p.add_argument("--out", help="directory for the PNGs and summary.md")
    p.add_argument("--plan-figure", metavar="PNG", help="draw the planner's ResNet-50 figure (no results needed)")
    args = p.parse_args(argv)
    if args.plan_figure:
        fig = fig_plan(plan_grid(), "ResNet-50 on h100-ib-ndr, batch 32 per GPU (compute assumed: 10% MFU)")
        fig.savefig(args.plan_figure, dpi=110)
        print(args.plan_figure)
        return 0
    if not args.results or not args.out:
        p.exit(2, "distbench report: error: give RESULTS and --out\n")
    if not Path(args.results).exists():
        p.exit(2, f"distbench report: error: no such results file or directory: {args.results}\n")
    for path in write_report(args.results, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
