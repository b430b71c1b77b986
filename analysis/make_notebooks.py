"""Writes the analysis notebooks (stored without outputs). Edit here, then run:  python analysis/make_notebooks.py"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
PARAMS = """import os

# The results to read: a .jsonl file or a directory of them. Default: the committed study in data/.
RESULTS = os.environ.get("DISTBENCH_RESULTS", "data")"""
SETUP = """%matplotlib inline
import pandas as pd

from distbench.results import analysis, report

pd.set_option("display.width", 200)
df = analysis.load_runs(RESULTS)
print(f"{len(df)} ok runs from {RESULTS}" if len(df) else f"no ok runs in {RESULTS}: the tables below are empty")"""

NOTEBOOKS = {
    "comm_savings": [
        new_markdown_cell(
            "# What each technique saves on the wire\n\n"
            "`payload` is what the comm hook really handed to the collective per step; `expected` is what the model "
            "says must be sent (`distbench.comm.expected`: the trainable parameters' bytes under DDP, padded to the "
            "ranks under FSDP2 and ZeRO-3, activations for a sharded head). They must be equal: a saving counts "
            "only if the bytes really drop (a "
            "gradient masked to zero is still sent). `bytes_saved_frac` compares each run with its learned-head, "
            "no-freeze baseline of the same settings."
        ),
        new_code_cell(PARAMS),
        new_code_cell(SETUP),
        new_code_cell(
            'cols = ["config.model.model", "config.model.num_classes", "variant", "params.trainable",\n'
            '        "comm.payload_bytes_per_step", "comm.expected_bytes_per_step", "bytes_saved_frac"]\n'
            "table = df.reindex(columns=cols).sort_values(cols[:3])\n"
            'mismatch = table[table["comm.payload_bytes_per_step"] != table["comm.expected_bytes_per_step"]]\n'
            'print("runs where payload != expected:", len(mismatch))\n'
            "table"
        ),
        new_code_cell("report.fig_comm_savings(df);"),
        new_markdown_cell(
            "Bytes per step by variant (head, freeze rule, parameterisation, engine, hook, precision; world size where "
            "several), for each data set, model, feature width (where the model was built at another) and class "
            "count. A cell holds one configuration: bytes depend on nothing else, so repeats agree."
        ),
        new_code_cell(
            'index = ["config.data.dataset", "config.model.model", "config.model.width", "config.model.num_classes"]\n'
            'cells = df.reindex(columns=[*index, "variant", "comm.payload_bytes_per_step"])\n'
            'width = cells["config.model.width"]\n'
            'cells["config.model.width"] = width.map(lambda w: "default" if pd.isna(w) else str(int(w)))\n'
            'cells.pivot_table(index=index, columns="variant", values="comm.payload_bytes_per_step", aggfunc="max")'
        ),
        new_markdown_cell(
            "## Bytes per bucket\n\n"
            "`comm.buckets`: each DDP bucket (each reduce-scatter group under FSDP, each reduction under DeepSpeed) "
            "in the order it is sent, with its bytes, dtype and first and last parameter; the entries sum to the "
            "payload."
        ),
        new_code_cell("report.fig_buckets(df);"),
    ],
    "throughput": [
        new_markdown_cell(
            "# Throughput: learned against fixed heads\n\n"
            "Samples/s over all ranks, p50 step time, and exposed communication measured two ways: "
            "`exposed_comm_ms`, p50 step time minus the p50 of the same steps with gradient sync off (null under "
            "FSDP and DeepSpeed), and `exposed_comm_ms_direct`, the median over steps of the wait of the rank that "
            "computed longest (`perf.ranks`). `speedup` is samples/s over the baseline's. Each study (one results "
            "file) is drawn alone: runs of different studies ran on a machine under different loads."
        ),
        new_code_cell(PARAMS),
        new_code_cell(SETUP),
        new_code_cell(
            'cols = ["config.model.model", "config.model.num_classes", "variant", "perf.samples_per_s",\n'
            '        "perf.step_time_ms.p50", "perf.step_time_ms.p90", "perf.exposed_comm_ms",\n'
            '        "perf.exposed_comm_ms_direct", "speedup"]\n'
            "df.reindex(columns=cols).sort_values(cols[:3])"
        ),
        new_code_cell(
            "found = analysis.studies(RESULTS)\n"
            'print(f"{len(found)} studies: {sorted(found)}" if found else f"no studies with ok runs in {RESULTS}")\n'
            "for study, runs in found.items():\n"
            "    report.fig_throughput(runs, study)"
        ),
        new_markdown_cell(
            "## Inside a step: per-rank traces\n\n"
            "A run with `--profile-dir DIR` writes one torch.profiler trace per rank, `DIR/rank-<r>.json.gz`: open "
            "one in Perfetto (ui.perfetto.dev, Open trace file). On GPU runs, Holistic Trace Analysis gives the "
            "overlap of communication with compute per rank (`pip install holistictraceanalysis`); it reads GPU "
            "kernels only, so a CPU run's traces give none, and the cell says so. `DISTBENCH_TRACES` names the "
            "directory; by default, the last profiled run's in `RESULTS`."
        ),
        new_code_cell(
            "from distbench.results import traces\n\n"
            'TRACES = os.environ.get("DISTBENCH_TRACES") or analysis.last_profile_dir(df)\n'
            "if TRACES is None:\n"
            '    print(f"no profiled run in {RESULTS}: run with --profile-dir DIR, or set DISTBENCH_TRACES")\n'
            "else:\n"
            "    overlap, why_not = traces.comm_comp_overlap(TRACES)\n"
            "    print(why_not or overlap)\n"
            "    display(pd.DataFrame(traces.summary(TRACES)))"
        ),
    ],
    "accuracy": [
        new_markdown_cell(
            "# Accuracy against what is trained\n\n"
            "Top-1 on held-out data against the fraction of conv weights learned (Rosenfeld & Tsotsos 2018), for "
            "learned and fixed heads (Hoffer et al. 2018 report little or no loss from fixing the head)."
        ),
        new_code_cell(PARAMS),
        new_code_cell(SETUP),
        new_code_cell(
            "cols = [\n"
            '    "config.model.model",\n'
            '    "config.data.dataset",\n'
            '    "variant",\n'
            '    "params.conv_learned_fraction",\n'
            '    "params.trainable",\n'
            '    "accuracy.top1",\n'
            '    "accuracy.top5",\n'
            '    "top1_delta",\n'
            "]\n"
            'df.reindex(columns=cols).sort_values(["config.model.model", "params.conv_learned_fraction"])'
        ),
        new_code_cell("report.fig_accuracy(df);"),
        new_markdown_cell(
            "## The price of fixing the head (issue 24's study)\n\n"
            "Learned against fixed heads over C / N at feature widths N = 32 and 128 (two bodies each) and "
            "N = 256 at 100K classes, every head of a grid line at the same samples per class "
            "(`analysis/head_scaling.toml`; longer lines, at more samples per class, in "
            "`head_scaling_long.toml`; 100K classes in `head_scaling_100k.toml`); the learned head's lines from "
            "N = 128 on end when their curve is flat (`--until-flat`; all but the tiny body's at C = 64, run "
            "before the rule). `learned_top1` is the learned "
            "head's top-1 at this run's samples per class (`spc`), from its longest run's curve (its last point "
            "past the curve's end); `gap` that minus "
            "this head's top-1, in points; `capacity` is C x N over the backbone's parameters (what a learned "
            "head holds that a fixed one asks the backbone to absorb); `spc_to_90` the samples per class at which "
            "the curve first reaches 90% of the learned head's final top-1 (NaN: not within the budget); `flat`: "
            "the curve is flat by the study's `--until-flat` rule at 0.01 (`analysis.HEAD_SCALING_FLAT`; "
            "`learned_flat`: the baseline's). Only this study's records are drawn."
        ),
        new_code_cell(
            "import os\n\n"
            'own = os.path.join(RESULTS, "head_scaling.jsonl") if os.path.isdir(RESULTS) else RESULTS\n'
            "hs = analysis.load_runs(own) if os.path.exists(own) else df.iloc[0:0]\n"
            'table = analysis.head_scaling(hs) if "accuracy.curve" in hs else hs\n'
            'print(f"{len(table)} head-scaling runs in {own}" if len(table) else f"no head-scaling runs in {own}")\n'
            "table"
        ),
        new_code_cell("report.fig_price_of_fixing(hs);"),
        new_markdown_cell(
            "## Language-model heads (issue 27's study)\n\n"
            "gpt-tiny (d = 64) on `synthetic-text`, whose entropy rate is known exactly (`analysis/lm_heads.toml`), "
            "and on the Python standard library tokenized here (`analysis/lm_corpus.toml`): learned, tied, "
            "fixed-srht and sharded vocabulary heads, every head of a vocabulary seeing the same tokens. "
            "`excess_loss` is the held-out loss above the entropy rate (NaN on real text), `loss_vs_learned` the loss "
            "minus the learned head's at the same tokens per vocabulary entry, `mb_per_step` what a rank sends; "
            "`loss_fell` how far the loss fell over the line's last doubling of tokens, and `flat` the `--until-flat` "
            "rule at the language models' tolerance (`analysis.LM_FLAT`: 0.0025 ln V nats per doubling, 0.25 points "
            "of top-1). Longer lines, each until flat or its cap: `lm_heads_long.toml`, `lm_corpus_long.toml` "
            "(on real text every line so far reached its cap still falling). Each figure draws its own study's "
            "records only; its cost column compares the heads at the largest tokens per entry they all have run."
        ),
        new_code_cell(
            "lm = {}\n"
            'for study in ("lm_heads", "lm_corpus"):\n'
            '    own = os.path.join(RESULTS, f"{study}.jsonl") if os.path.isdir(RESULTS) else RESULTS\n'
            "    lm[study] = analysis.load_runs(own) if os.path.exists(own) else df.iloc[0:0]\n"
            "    print(study, len(lm[study]), 'runs')\n"
            'analysis.lm_heads(lm["lm_heads"])'
        ),
        new_code_cell('report.fig_lm_heads(lm["lm_heads"]);'),
        new_code_cell('analysis.lm_heads(lm["lm_corpus"])'),
        new_code_cell('report.fig_lm_heads(lm["lm_corpus"], title="the Python standard library (BPE)");'),
        new_code_cell("analysis.summary_table(df)"),
    ],
    "scaling": [
        new_markdown_cell(
            "# What the savings would buy on a GPU cluster\n\n"
            "`distbench.perfmodel.plan` predicts a data-parallel step on n GPUs of an interconnect preset "
            "(`distbench.perfmodel.nccl`: "
            "NCCL's ring and tree after its own tuner; NVLink inside a node, one NIC per GPU across nodes; every "
            "number cited): DDP's buckets are all-reduced one after another, they hide behind the backward pass, "
            "and the step waits for what outlasts it. Bytes are exact; collective times hold published nccl-tests "
            "bandwidths to 15%; compute from a model spec is an assumption (FLOPs at 10% of the GPU's peak), "
            "from records it is measured. One panel per model and class count; each line is labelled with its "
            "speed-up over the learned head at the largest count."
        ),
        new_code_cell(PARAMS),
        new_code_cell(SETUP),
        new_code_cell(
            "from distbench.perfmodel import nccl, plan\n\n"
            'CLUSTER = "h100-ib-ndr"\n'
            "grid = report.plan_grid(cluster=CLUSTER)\n"
            'report.fig_plan(grid, f"ResNet-50 on {CLUSTER}, batch 32 per GPU (compute assumed: 10% MFU)");'
        ),
        new_code_cell(
            'pd.DataFrame(grid).pivot_table(index=["group", "gpus"], columns="head", values="step_ms").round(1)'
        ),
        new_markdown_cell(
            "## The runs in `RESULTS`, on the same cluster\n\n"
            "Each DDP run with an exposed-communication time brings its measured compute time, payload and "
            "buckets; its overlap window is solved from its own exposed time on the interconnect it ran on "
            "(gloo: the `measured` preset, this machine's fit). Only the all-reduce is predicted anew."
        ),
        new_code_cell(
            "rows, skipped = plan.plan_records(RESULTS, list(report.PLAN_GPUS), CLUSTER)\n"
            'print(f"{len(rows) // len(report.PLAN_GPUS)} runs planned, {skipped} without an exposed time left out")\n'
            'report.fig_plan(rows, f"measured compute, all-reduce on {CLUSTER}");'
        ),
        new_markdown_cell(
            "## The `measured` preset against this machine's collective benchmark\n\n"
            "`nccl.MEASURED` is fitted to the medians (`time_us`) of the committed commbench records "
            "(`commbench_measured.jsonl`; `python -m distbench.perfmodel.costmodel --fit-preset`); the tests hold "
            "the median over runs of each (ranks, size) within 0.75x..1.33x of it, and a fresh benchmark at 2 and "
            "4 gloo ranks too. `ratio` below is each record's prediction over its own median: one record scatters "
            "more than the median over runs does."
        ),
        new_code_cell(
            "bench = report.load_commbench(RESULTS)\n"
            "if bench.empty:\n"
            '    print(f"no commbench records in {RESULTS}: run launch/commbench.py to compare the preset with them")\n'
            "else:\n"
            '    ar = bench[bench["op"] == "all_reduce"].copy()\n'
            '    pairs = zip(ar["bytes"], ar["world_size"], strict=True)\n'
            '    ar["predicted_us"] = [nccl.collective_time("all_reduce", b, n, "measured") * 1e6 for b, n in pairs]\n'
            '    ar["ratio"] = ar["predicted_us"] / ar["time_us"]\n'
            '    display(ar[["world_size", "bytes", "time_us", "predicted_us", "ratio"]])'
        ),
    ],
}


def write(name: str, cells: list, out: Path = HERE) -> Path:
    """Write one notebook as the project stores it: stable cell ids and ruff-formatted code, so that
    regenerating an unchanged notebook changes nothing (tests/test_notebooks.py holds them equal)."""
    for i, cell in enumerate(cells):
        cell["id"] = f"{name}-{i}"
    nb = new_notebook(
        cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    path = out / f"{name}.ipynb"
    nbformat.write(nb, path)
    subprocess.run([sys.executable, "-m", "ruff", "format", "-q", str(path)], check=True)
    return path


if __name__ == "__main__":
    for name in sys.argv[1:] or NOTEBOOKS:  # python analysis/make_notebooks.py [name ...]
        print(write(name, NOTEBOOKS[name]))
