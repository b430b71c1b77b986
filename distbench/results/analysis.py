"""Results as tables for notebooks: each run next to its baseline.

The baseline of a run is the run with a learned head, no frozen weights and no reparameterisation that
has the same other settings (model, class count, data, batch, engine, world size, ...). Derived columns:
- bytes_saved_frac = 1 - payload / baseline payload
- speedup          = samples/s / baseline samples/s
- top1_delta       = top-1 - baseline top-1
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from distbench import results
from distbench.config import defaults
from distbench.model.structure.freeze import parse_rule
from distbench.results.curves import doubling_start, flat, loss_fell

# Settings that define a variant rather than the experiment: they may differ from the baseline.
VARIANT_COLUMNS = (
    "config.model.head",
    "config.model.head_bias",
    "config.model.head_scale",
    "config.model.head_scale_init",
    "config.model.head_rows",
    "config.model.param",
    "config.freeze.freeze",
    "config.freeze.freeze_mode",
    "config.freeze.bn",
    "config.freeze.frozen_init",
    "config.freeze.freeze_dim",
)
# Settings that change neither what a step sends and costs nor what a budget trains: where the output goes, the
# loader's workers, and the stop rule (a learned line that ended once flat is the baseline of a fixed head run to
# the whole budget beside it: the gap is then read against the learned curve's last point, a lower bound;
# `with_baselines` still prefers a baseline under the run's own rule where the study has one).
IGNORED_PREFIXES = ("config.output.", "config.data.workers", "config.train.until_flat")


def learns_everything(freeze: str) -> bool:
    """`fraction:1.0` learns every filter, as `none` does."""
    return parse_rule(freeze).learns_everything


def _setting(row: pd.Series, column: str):
    """A run's config value, or the field's default where the record predates it (distbench.config owns
    the defaults)."""
    value = row.get(column)
    if value is None or (not isinstance(value, str | list | dict) and pd.isna(value)):
        section, name = column.split(".")[1:]
        return defaults()[section][name]
    return value


def variant(row: pd.Series) -> str:
    """A short label: 'fixed head, fraction:0.1 (mask)'."""
    parts = [f"{_setting(row, 'config.model.head')} head"]
    scale = row.get("config.model.head_scale")
    if isinstance(scale, str):
        parts[0] += f" (alpha fixed at the {scale})"  # "rule": the cosine-softmax scale
    elif scale is not None and not pd.isna(scale):
        parts[0] += f" (alpha fixed at {scale:g})"
    if _setting(row, "config.model.head_scale_init") == "rule":
        parts[0] += " (alpha from the rule)"
    if _setting(row, "config.model.head_rows") != "authors":
        parts[0] += f" ({row['config.model.head_rows']} rows)"
    freeze = _setting(row, "config.freeze.freeze")
    if not learns_everything(freeze):
        mode = _setting(row, "config.freeze.freeze_mode")
        dim = _setting(row, "config.freeze.freeze_dim")
        dim = "out" if dim is None or pd.isna(dim) else dim  # records from before --freeze-dim
        parts.append(freeze + (f" along {dim}" if dim != "out" else "") + (" (mask)" if mode == "mask" else ""))
    if _setting(row, "config.model.param") != "none":
        parts.append(row["config.model.param"])
    parts += cost_labels(row)
    return ", ".join(parts)


def cost_labels(row: pd.Series) -> list[str]:
    """The settings, other than the model's, that change what a step sends or costs, where not the default:
    the engine (and its ZeRO stage), the DDP comm hook and the precision. Each is also part of the baseline
    match (`setting_columns`): a run is compared with a learned head under the same engine, hook and
    precision."""
    parts = []
    backend = _setting(row, "config.dist.backend")
    if backend == "deepspeed":
        parts.append(f"DeepSpeed ZeRO-{int(_setting(row, 'config.dist.zero_stage'))}")
    elif backend == "fsdp":
        parts.append("FSDP2")
    hook = _setting(row, "config.dist.comm_hook")
    if hook == "powersgd":
        parts.append(f"PowerSGD rank {int(_setting(row, 'config.dist.powersgd_rank'))}")
    elif hook != "allreduce":
        parts.append(f"{hook} hook")
    precision = _setting(row, "config.train.precision")
    if precision != "auto":
        parts.append(precision)
    return parts


def with_world_sizes(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the world size in each variant's label where the frame holds runs at several: the same
    variant on 2 and 8 ranks is two rows of every table and figure, never one."""
    if "env.world_size" in df and df["env.world_size"].nunique() > 1:
        df = df.assign(variant=df["variant"] + ", " + df["env.world_size"].astype(int).astype(str) + " ranks")
    return df


def setting_columns(df: pd.DataFrame) -> list[str]:
    cols = [
        c
        for c in df.columns
        if c.startswith("config.") and c not in VARIANT_COLUMNS and not c.startswith(IGNORED_PREFIXES)
    ]
    return [*cols, "env.world_size", "env.backend"] if "env.world_size" in df else cols


def with_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """`df` (from results.load) plus `variant`, the baseline's run_id and the derived columns. Runs with
    no baseline among the results get NaN. Only ok runs are compared."""
    df = (df[df["status"] == "ok"] if "status" in df else df).reset_index(drop=True)
    if df.empty:
        return df
    df["variant"] = df.apply(variant, axis=1)
    df = with_world_sizes(df)
    is_base = (
        (df["config.model.head"] == "learned")
        & df["config.freeze.freeze"].map(learns_everything)
        & (df.get("config.model.param", pd.Series("none", index=df.index)) == "none")
    )
    metrics = {
        "comm.payload_bytes_per_step": "base_payload",
        "perf.samples_per_s": "base_samples_per_s",
        "accuracy.top1": "base_top1",
        "run_id": "baseline_run_id",
        "perf.step_time_ms.p50": "base_step_p50",
        "perf.step_time_ms.p90": "base_step_p90",
    }

    def baselines(keys: list[str]) -> pd.DataFrame:
        """Each run's baseline: the learned run of the same `keys` that finished last."""
        key = df[keys].map(repr).agg("|".join, axis=1)  # repr: None, NaN and numbers all become text
        base = df[is_base].assign(_key=key[is_base]).sort_values("finished_at").groupby("_key").last()
        joined = base[[m for m in metrics if m in base]].rename(columns=metrics)
        return (
            pd.DataFrame({"_key": key}).merge(joined, left_on="_key", right_index=True, how="left").drop(columns="_key")
        )

    keys = setting_columns(df)
    found = baselines(keys)
    if "config.train.until_flat" in df:  # one under the same stop rule first, where the study has one
        found = baselines([*keys, "config.train.until_flat"]).fillna(found)
    df = pd.concat([df, found.set_index(df.index)], axis=1)
    df["bytes_saved_frac"] = 1 - df["comm.payload_bytes_per_step"] / df["base_payload"]
    df["speedup"] = df["perf.samples_per_s"] / df["base_samples_per_s"]
    df["top1_delta"] = df["accuracy.top1"] - df["base_top1"]
    return df


def with_config_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """Records written before a config field existed get its default (fields are added, never renamed)."""
    import dataclasses

    from distbench.config import SECTIONS

    df = df.copy()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            col = f"config.{section}.{f.name}"
            if f.default is None:
                continue
            df[col] = df[col].where(df[col].notna(), f.default) if col in df else f.default
    return df


def load_runs(path: str | os.PathLike | list) -> pd.DataFrame:
    """results.load + config defaults + baselines + derived columns: the frame every notebook starts from.
    `path`: a results file, a directory of them, or a list of files (their records together)."""
    if isinstance(path, list):
        records = [r for f in path for r in results.read_records(f)]
        df = pd.json_normalize(records, sep=".") if records else pd.DataFrame()
    else:
        df = results.load(path)
    return with_baselines(with_config_defaults(df)) if not df.empty else df


def last_profile_dir(df: pd.DataFrame) -> str | None:
    """The trace directory of the last run in `df` that was profiled (--profile-dir), or None."""
    if "perf.profile.dir" not in df:
        return None
    profiled = df[df["perf.profile.dir"].notna()].sort_values("finished_at")
    return str(profiled["perf.profile.dir"].iloc[-1]) if len(profiled) else None


def studies(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The ok runs of each study under `path`, by study: one per results file (a grid writes its own), named
    by its path without `.jsonl`; a file alone is one study. Files with no runs (a collective benchmark's
    records) are left out. Each study is compared within itself: its runs against baselines of the same
    file, never against another study's, which ran on a machine under another load."""
    path = Path(path)
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    found = {}
    for file in files:
        runs = load_runs(file)
        if not runs.empty:
            found[str(file.relative_to(path) if path.is_dir() else file.name).removesuffix(".jsonl")] = runs
    return found


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its data set, model, class count, variant and steps (what tells a study's runs apart), its
    bytes, throughput, accuracy and the derived ratios."""
    cols = {
        "config.data.dataset": "data",
        "config.model.model": "model",
        "config.model.num_classes": "classes",
        "variant": "variant",
        "config.train.steps": "steps",
        "params.trainable": "trainable",
        "params.conv_learned_fraction": "conv learned",
        "comm.payload_bytes_per_step": "bytes/step",
        "bytes_saved_frac": "bytes saved",
        "perf.samples_per_s": "samples/s",
        "speedup": "speedup",
        "accuracy.top1": "top-1",
        "top1_delta": "top-1 delta",
    }
    present = [c for c in cols if c in df]
    out = df[present].rename(columns=cols)
    return out.sort_values([c for c in ("data", "model", "classes", "variant", "steps") if c in out]).reset_index(
        drop=True
    )


def to_markdown(table: pd.DataFrame) -> str:
    """A markdown table without extra dependencies (pandas' to_markdown needs tabulate)."""

    def fmt(v) -> str:
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}")
        return f"{v:,}" if isinstance(v, int | np.integer) else str(v)

    rows = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in table.itertuples(index=False)]
    return "\n".join(rows)


# ------------------------------------------------------------------------------------- what engines send
COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather")


def engine_label(row: pd.Series) -> str:
    backend = row["config.dist.backend"]
    return f"deepspeed ZeRO-{int(row['config.dist.zero_stage'])}" if backend == "deepspeed" else backend


def engine_table(df: pd.DataFrame) -> str:
    """Markdown: per class count, engine and head, the bytes each rank hands to each collective per step,
    the step time and the peak memory per rank (the README's "What each engine sends")."""
    ok = df[df["status"] == "ok"].copy()
    ok["engine"] = ok.apply(engine_label, axis=1)
    ok = ok.sort_values(["config.model.num_classes", "engine", "config.model.head"], kind="stable")
    mb = 1e6
    rows = [
        "| classes | engine | head | payload MB/step | all_reduce | reduce_scatter | all_gather | step p50 ms "
        "| peak memory per rank MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in ok.iterrows():
        by_op = [r.get(f"comm.collectives.{op}") for op in COLLECTIVES]
        cells = ["" if v is None or pd.isna(v) else f"{v / mb:,.2f}" for v in by_op]
        rows.append(
            f"| {int(r['config.model.num_classes']):,} | {r['engine']} | {r['config.model.head']} "
            f"| {r['comm.payload_bytes_per_step'] / mb:,.2f} | {' | '.join(cells)} "
            f"| {r['perf.step_time_ms.p50']:,.0f} | {r['perf.peak_memory_bytes'] / mb:,.0f} |"
        )
    return "\n".join(rows)


def heads_markdown(df: pd.DataFrame) -> str:
    """docs/results.md's head comparison: per class count and head, what is trained and sent, and the step
    time beside its learned baseline's, with a closing line naming the step-time ratios. `df`: load_runs'."""
    runs = df.sort_values(["config.model.num_classes", "comm.payload_bytes_per_step"], ascending=[True, False])
    rows = [
        "| classes | head | trainable params | bytes/step | bytes saved | samples/s | p50 step (ms) "
        "| exposed comm (ms) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for c, g in runs.groupby("config.model.num_classes", sort=True):
        for _, r in g.iterrows():
            rows.append(
                f"| {int(c):,} | {r['config.model.head']} | {int(r['params.trainable']):,} "
                f"| {int(r['comm.payload_bytes_per_step']):,} | {100 * r['bytes_saved_frac']:.1f}% "
                f"| {r['perf.samples_per_s']:,.0f} | {r['perf.step_time_ms.p50']:,.0f} "
                f"| {r['perf.exposed_comm_ms']:,.1f} |"
            )
        others = g[g["run_id"] != g["baseline_run_id"]]
        faster = [f"{r['base_step_p50'] / r['perf.step_time_ms.p50']:.1f}x with {r['config.model.head']}"
                  for _, r in others.iterrows()]  # fmt: skip
        if faster:
            ratios.append(f"{int(c):,} classes: {', '.join(faster)}")
    if ratios:
        rows += ["", "The learned head's p50 step over each other head's: " + "; ".join(ratios) + "."]
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------- head scaling
FIXED_LABELS = {
    ("fixed-srht", "authors"): "fixed-srht, authors' alpha",
    ("fixed-srht", "rule"): "fixed-srht, alpha from the rule",
    ("fixed-orthogonal", "rule"): "fixed-orthogonal (unit rows), alpha from the rule",
}


def head_label(row: pd.Series) -> str:
    head = row["config.model.head"]
    if head in ("learned", "tied", "sharded"):
        return head
    key = (head, _setting(row, "config.model.head_scale_init"))
    return FIXED_LABELS.get(key, str(row.get("variant", head)))


def curve_reach(curve: list, target: float) -> float:
    """Samples per class at the first curve point whose top-1 reaches `target`; NaN if none does."""
    for point in curve or []:
        if point["top1"] >= target:
            return point["samples_per_class"]
    return float("nan")


def curve_at(curve: list, spc: float, key: str = "top1") -> float:
    """`key` (top-1, or `eval_loss`) of the last curve point at or before `spc` samples per class; past the
    curve's end, its last point (a longer run is compared with the converged value); NaN before its first point
    or where the point lacks `key`."""
    seen = [p.get(key) for p in curve or [] if p["samples_per_class"] <= spc * (1 + 1e-9)]
    return float("nan") if not seen or seen[-1] is None else seen[-1]


def gap_moved(curve: list | None, baseline: list | None) -> float:
    """How far a run's held-out loss against the learned head's (`baseline`: that run's curve) moved over the
    run's last doubling of tokens: the gap at its end minus the gap where that doubling starts (negative: it
    closed). A gap that holds while both curves still fall is a comparison settled before the curves are. Past
    the baseline's end its last point stands in (as for `loss_vs_learned`: a flat baseline's converged loss); NaN
    without a doubling, or without a baseline point there."""
    start = doubling_start(curve) if curve else None
    if start is None or start.get("eval_loss") is None or curve[-1].get("eval_loss") is None:
        return float("nan")

    def gap(point: dict) -> float:
        return point["eval_loss"] - curve_at(baseline, point["samples_per_class"], "eval_loss")

    return gap(curve[-1]) - gap(start)


def longest_runs(runs: pd.DataFrame, keys: list[str], budget: str) -> pd.DataFrame:
    """The longest of `runs` (largest `budget`; the last finished among equals) for each value of `keys`, indexed
    by `keys`: the baseline a study holds its other runs against (its `accuracy.curve` and `run_id`)."""
    return runs.sort_values([budget, "finished_at"]).drop_duplicates(keys, keep="last").set_index(keys)


# The head-scaling study's --until-flat (analysis/head_scaling.toml), by which its tables judge every line.
HEAD_SCALING_FLAT = 0.01


def head_scaling(df: pd.DataFrame) -> pd.DataFrame:
    """The price of fixing the head, one row per ok run of the head-scaling study: its top-1 next to the learned
    head's at the same body, feature width N and class count C, and

    - `learned_top1`: the learned head's top-1 at this run's budget of samples per class (`spc`), read from
      the curve of the longest learned run at the same body, N and C (`learned_run`; its final top-1 past its
      end),
    - `gap`: learned_top1 minus this run's top-1 (points; 0 for the longest learned run),
    - `c_over_n`: C / N, and `capacity`: C x N / the backbone's parameters (what a learned head holds that a
      fixed one asks the backbone to absorb),
    - `spc_to_90`: samples per class at the first curve point reaching 90% of the longest learned run's
      final top-1 (NaN: not within the budget),
    - `flat`: its curve is flat by the --until-flat rule at HEAD_SCALING_FLAT; `learned_flat`: the baseline's."""
    d = df[df["status"] == "ok"].copy() if "status" in df else df.copy()
    if "params.head_in_features" in d:
        d = d[d["params.head_in_features"].notna()]  # records from before the field: N unknown
    if d.empty or "params.head_in_features" not in d:
        return d.iloc[0:0]
    d["head_label"] = d.apply(head_label, axis=1)
    d["N"] = d["params.head_in_features"].astype(int)
    d["C"] = d["config.model.num_classes"].astype(int)
    d["body"] = d["config.model.model"]
    d["c_over_n"] = d["C"] / d["N"]
    d["backbone_params"] = d["params.total"] - d["params.head_total"]
    d["capacity"] = d["C"] * d["N"] / d["backbone_params"]
    keys = ["body", "N", "C"]
    d["spc"] = [c[-1]["samples_per_class"] if c else float("nan") for c in d["accuracy.curve"]]
    # the baseline: a learned head that learns everything else, its longest run (the last, among equals)
    freeze = d["config.freeze.freeze"] if "config.freeze.freeze" in d else pd.Series("none", index=d.index)
    learned = d[(d["config.model.head"] == "learned") & freeze.fillna("none").map(learns_everything)]
    base = longest_runs(learned, keys, "spc")
    curves = base["accuracy.curve"].to_dict()
    at = [tuple(k) for k in d[keys].itertuples(index=False)]
    nan = float("nan")
    d["learned_run"] = [base.at[k, "run_id"] if k in curves else None for k in at]
    d["learned_top1"] = [curve_at(curves[k], s) if k in curves else nan for k, s in zip(at, d["spc"], strict=True)]
    final = [curves[k][-1]["top1"] if k in curves else nan for k in at]  # the final evaluation ends a curve
    d["learned_flat"] = [flat(curves.get(k), HEAD_SCALING_FLAT, k[2]) for k in at]
    d["gap"] = 100 * (d["learned_top1"] - d["accuracy.top1"])
    d["spc_to_90"] = [curve_reach(c, 0.9 * t) for c, t in zip(d["accuracy.curve"], final, strict=True)]
    d["flat"] = [flat(c, HEAD_SCALING_FLAT, n) for c, n in zip(d["accuracy.curve"], d["C"], strict=True)]
    cols = [*keys, "head_label", "c_over_n", "capacity", "accuracy.top1", "learned_top1", "gap", "spc",
            "spc_to_90", "flat", "learned_flat", "run_id", "learned_run"]  # fmt: skip
    return d[cols].sort_values([*keys, "head_label"]).reset_index(drop=True)


def _per_class(x: float) -> str:
    """Samples per class as a table shows them: 25,600, 62.5, 40 (39.99 is the balanced stream's 40)."""
    r = round(float(x), 1)
    return f"{int(r):,}" if r == int(r) else f"{r:,.1f}"


def _top1_range(values: pd.Series) -> str:
    lo, hi = 100 * values.min(), 100 * values.max()
    return f"{lo:.1f}%" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f}%"


def head_scaling_markdown(table: pd.DataFrame) -> str:
    """Markdown, one row per body, N and C of `head_scaling(...)`: C / N, capacity, the baseline learned run's
    top-1 and budget, the fixed heads' top-1 at their grid budget (the range over the heads) and the best of any
    longer fixed line, and where the learned and the best fixed curve first reach 90% of the learned head's
    final top-1 ("not in X": not within the longest fixed line's X per class)."""
    rows = [
        "| body | N | C | C / N | capacity | learned top-1 (per class) | fixed top-1, the heads' range (per class) "
        "| fixed, longer (per class) | 90% of learned by (per class): learned / best fixed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (body, n, c), g in table.groupby(["body", "N", "C"], sort=True):
        learned = g[g["run_id"] == g["learned_run"]]
        fixed = g[g["head_label"] != "learned"]
        base = learned.iloc[0] if len(learned) else None
        cells = [body, f"{n:,}", f"{c:,}", f"{g['c_over_n'].iloc[0]:,.3g}", f"{g['capacity'].iloc[0]:,.3g}"]
        cells.append(f"{100 * base['accuracy.top1']:.1f}% ({_per_class(base['spc'])})" if base is not None else "")
        if len(fixed):
            short = fixed[fixed["spc"] == fixed["spc"].min()]
            longer = fixed[fixed["spc"] > fixed["spc"].min()]
            cells.append(f"{_top1_range(short['accuracy.top1'])} ({_per_class(short['spc'].iloc[0])})")
            if len(longer):
                top = longer.loc[longer["accuracy.top1"].idxmax()]
                cells.append(f"{100 * top['accuracy.top1']:.1f}% ({_per_class(top['spc'])})")
            else:
                cells.append("")
            reach = fixed["spc_to_90"].min()
            best = _per_class(reach) if pd.notna(reach) else f"not in {_per_class(fixed['spc'].max())}"
        else:
            cells += ["", ""]
            best = ""
        mine = _per_class(base["spc_to_90"]) if base is not None and pd.notna(base["spc_to_90"]) else ""
        cells.append(f"{mine} / {best}" if best else mine)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


# --until-flat for language models, and the tables' `flat`: the loss may fall by 0.0025 ln V nats per doubling of
# tokens (0.023 at 8K, about the tied head's measured cost, so that a flat line resolves it) and top-1 move by
# 0.25 points. The image study's 0.01 would let the loss fall 0.09 nats per doubling at 8K.
LM_FLAT = 0.0025


def lm_heads(df: pd.DataFrame) -> pd.DataFrame:
    """Language-model heads (issue 27's study), one row per ok run of a language model: what it sends and what it
    costs in held-out loss at its vocabulary V and budget (`tokens_per_entry`: target tokens seen per vocabulary
    entry), with `excess_loss` = held-out loss minus the task's entropy rate (NaN on real text: no oracle),
    `loss_vs_learned` = its loss minus the learned head's at the same V and budget (read from the learned run's
    curve), `gap` = the learned head's top-1 there minus this run's (points), `mb_per_step` (payload per rank),
    `tokens_per_s` and `peak_mb`; `loss_fell`: how far its loss fell over the curve's last doubling of tokens,
    `gap_moved`: how far its `loss_vs_learned` moved over that doubling (`gap_moved`; NaN for a learned head), and
    `flat` by the --until-flat rule at LM_FLAT."""
    d = df[df["status"] == "ok"].copy() if "status" in df else df.copy()
    if d.empty or "accuracy.perplexity" not in d:
        return d.iloc[0:0]
    d = d[d["accuracy.perplexity"].notna()]
    if d.empty:
        return d
    d["head_label"] = d.apply(head_label, axis=1)
    d["V"] = d["config.model.num_classes"].astype(int)
    d["body"] = d["config.model.model"]
    d["dataset"] = d["config.data.dataset"]
    d["lr"] = [_setting(r, "config.train.lr") for _, r in d.iterrows()]  # a record without one ran the default
    d["tokens_per_entry"] = [c[-1]["samples_per_class"] if c else float("nan") for c in d["accuracy.curve"]]
    d["loss"] = d["accuracy.eval_loss"]
    oracle = d["accuracy.oracle_loss"] if "accuracy.oracle_loss" in d else pd.Series(float("nan"), index=d.index)
    d["excess_loss"] = d["loss"] - oracle.astype(float)
    keys = ["dataset", "body", "V", "lr"]  # a head is held against the learned head at its own rate
    curves = longest_runs(d[d["config.model.head"] == "learned"], keys, "tokens_per_entry")["accuracy.curve"].to_dict()
    at = list(zip(d[keys].itertuples(index=False, name=None), d["tokens_per_entry"], strict=True))
    d["loss_vs_learned"] = d["loss"] - [curve_at(curves.get(k), b, "eval_loss") for k, b in at]
    d["gap"] = 100 * ([curve_at(curves.get(k), b) for k, b in at] - d["accuracy.top1"])
    d["mb_per_step"] = d["comm.payload_bytes_per_step"] / 1e6
    d["tokens_per_s"] = d["perf.samples_per_s"] * d["config.model.seq_len"]
    d["peak_mb"] = d["perf.peak_memory_bytes"] / 1e6
    d["loss_fell"] = [loss_fell(c) for c in d["accuracy.curve"]]
    learned = d["config.model.head"] == "learned"
    d["gap_moved"] = [float("nan") if own else gap_moved(c, curves.get(k))
                      for own, c, (k, _) in zip(learned, d["accuracy.curve"], at, strict=True)]  # fmt: skip
    d["flat"] = [flat(c, LM_FLAT, v) for c, v in zip(d["accuracy.curve"], d["V"], strict=True)]
    cols = [*keys, "head_label", "tokens_per_entry", "loss", "excess_loss", "loss_vs_learned", "gap", "accuracy.top1",
            "accuracy.oracle_top1", "mb_per_step", "tokens_per_s", "peak_mb", "loss_fell", "gap_moved", "flat",
            "run_id"]  # fmt: skip
    for c in cols:
        if c not in d:
            d[c] = float("nan")
    return d[cols].sort_values([*keys, "head_label", "tokens_per_entry"]).reset_index(drop=True)


def _maybe(value, spec: str) -> str:
    return "" if pd.isna(value) else format(value, spec)


def _signed(value: float) -> str:
    """Nats against the learned head: "0" for none, else signed to three decimals (never "-0.000")."""
    return "" if pd.isna(value) else "0" if value == 0 else f"{round(value, 3) + 0.0:+.3f}"


# The order a language-model table lists its heads in: the baseline, then by bytes sent and loss given up.
LM_HEAD_ORDER = ("learned", "sharded", "tied", "fixed-srht, alpha from the rule", "fixed-srht, authors' alpha")


def lm_heads_markdown(table: pd.DataFrame) -> str:
    """Markdown of `lm_heads(...)` for one data set, one row per run by V, learning rate (a column where there are
    several), then head (LM_HEAD_ORDER), then budget:
    bytes per step and rank, tokens per second (all ranks) and peak memory (MB, max over ranks), held-out loss and
    perplexity, the loss above the entropy rate (a column only where the task has one), against the learned head
    at the same tokens, top-1, and the fall over the last doubling, how far the loss against the learned head moved
    over it, and `flat`."""
    if table.empty:
        return "no language-model runs"
    oracle = bool(table["excess_loss"].notna().any())
    rates = table["lr"].nunique() > 1  # a learning-rate check: the rate is a column
    order = {h: i for i, h in enumerate(LM_HEAD_ORDER)}
    runs = table.assign(_order=table["head_label"].map(lambda h: order.get(h, len(order))))
    runs = runs.sort_values(["V", "lr", "_order", "head_label", "tokens_per_entry"])
    head = ["V", *["lr"] * rates, "head", "tokens / entry", "MB / step / rank", "tokens / s", "peak MB"]
    head += ["held-out loss (nats)", "perplexity"]
    head += ["above the entropy rate"] * oracle + ["vs learned", "top-1", "fell over the last doubling"]
    head += ["vs learned, moved over that doubling", "flat"]
    rows = [
        "| " + " | ".join(head) + " |",
        "|---:|" + "---:|" * rates + "---|" + "---:|" * (len(head) - 3 - rates) + ":-:|",
    ]
    for _, r in runs.iterrows():
        cells = [f"{r['V']:,}", *[f"{r['lr']:g}"] * rates, r["head_label"], _per_class(r["tokens_per_entry"]),
                 f"{r['mb_per_step']:.2f}", _maybe(r["tokens_per_s"], ",.0f"), _maybe(r["peak_mb"], ",.0f"),
                 f"{r['loss']:.3f}", f"{math.exp(r['loss']):,.1f}"]  # fmt: skip
        if oracle:
            cells.append(f"{r['excess_loss']:.3f}")
        cells += [_signed(r["loss_vs_learned"]), f"{100 * r['accuracy.top1']:.1f}%", _maybe(r["loss_fell"], ".3f"),
                  _signed(r["gap_moved"]), "yes" if r["flat"] else "no"]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
