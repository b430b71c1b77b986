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

from distbench import analysis, report

pd.set_option("display.width", 200)
df = analysis.load_runs(RESULTS)
print(f"{len(df)} ok runs from {RESULTS}")"""

NOTEBOOKS = {
    "comm_savings": [
        new_markdown_cell(
            "# What each technique saves on the wire\n\n"
            "`payload` is what the comm hook really handed to the collective per step; `expected` is the sum of the "
            "trainable parameters' bytes. They must be equal: a saving counts only if the bytes really drop (a "
            "gradient masked to zero is still sent). `bytes_saved_frac` compares each run with its learned-head, "
            "no-freeze baseline of the same settings."
        ),
        new_code_cell(PARAMS),
        new_code_cell(SETUP),
        new_code_cell(
            'cols = ["config.model.model", "config.model.num_classes", "variant", "params.trainable",\n'
            '        "comm.payload_bytes_per_step", "comm.expected_bytes_per_step", "bytes_saved_frac"]\n'
            "table = df[cols].sort_values(cols[:3])\n"
            'mismatch = table[table["comm.payload_bytes_per_step"] != table["comm.expected_bytes_per_step"]]\n'
            'print("runs where payload != expected:", len(mismatch))\n'
            "table"
        ),
        new_code_cell("report.fig_comm_savings(df);"),
        new_markdown_cell("Bytes per step by head, freeze rule and parameterisation, for each model and class count:"),
        new_code_cell(
            'df.pivot_table(index=["config.model.model", "config.model.num_classes"], columns="variant",\n'
            '               values="comm.payload_bytes_per_step", aggfunc="last")'
        ),
    ],
    "throughput": [
        new_markdown_cell(
            "# Throughput: learned against fixed heads\n\n"
            "Samples/s over all ranks, p50 step time, and exposed communication (p50 step time minus the p50 of the "
            "same steps with gradient sync off; null under DeepSpeed). `speedup` is samples/s over the baseline's."
        ),
        new_code_cell(PARAMS),
        new_code_cell(SETUP),
        new_code_cell(
            'cols = ["config.model.model", "config.model.num_classes", "variant", "perf.samples_per_s",\n'
            '        "perf.step_time_ms.p50", "perf.step_time_ms.p90", "perf.exposed_comm_ms", "speedup"]\n'
            "df[cols].sort_values(cols[:3])"
        ),
        new_code_cell("report.fig_throughput(df);"),
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
            'df[cols].sort_values(["config.model.model", "params.conv_learned_fraction"])'
        ),
        new_code_cell("report.fig_accuracy(df);"),
        new_markdown_cell(
            "## Heads at many classes\n\n"
            "Top-1 on the synthetic task against the number of classes, per head, with the Bayes-optimal oracle "
            "(the nearest class code to each held-out sample's noisy code) dashed: the oracle says how learnable the "
            "task is, the gap to it is the network's. Each head at a class count sees the same samples."
        ),
        new_code_cell(
            'big = df[df["config.data.dataset"] == "synthetic"]\n'
            "cols = [\n"
            '    "config.model.num_classes",\n'
            '    "config.model.head",\n'
            '    "accuracy.top1",\n'
            '    "accuracy.top5",\n'
            '    "accuracy.oracle_top1",\n'
            '    "comm.payload_bytes_per_step",\n'
            '    "perf.samples_per_s",\n'
            '    "perf.peak_memory_bytes",\n'
            "]\n"
            "big[[c for c in cols if c in big]].sort_values(cols[:2])"
        ),
        new_code_cell("report.fig_large_classes(df);"),
        new_code_cell("analysis.summary_table(df)"),
    ],
    "scaling": [
        new_markdown_cell(
            "# What the savings would mean on a larger cluster\n\n"
            "A ring all-reduce of S bytes over n workers takes T(S, n) = 2(n-1) alpha + 2(n-1)/n S / beta "
            "(Thakur et al. 2005). alpha and beta are fitted to the collective micro-benchmark "
            "(`launch/commbench.py`) on the machine the runs used; each run's measured compute time, payload and "
            "hidden (overlapped) communication then give its projected step time and communication share at "
            "8 .. 4096 workers, on the fitted link and on what-if links. The extrapolation in n is the model's, "
            "not a measurement."
        ),
        new_code_cell(PARAMS),
        new_code_cell(SETUP),
        new_code_cell(
            "from distbench.costmodel import fit\n\n"
            "bench = report.load_commbench(RESULTS)\n"
            'model = fit(bench.to_dict("records"), op="all_reduce", time_field="time_us_min")\n'
            'print(f"alpha = {model.alpha * 1e6:.1f} us, beta = {model.beta / 1e9:.3f} GB/s "\n'
            '      f"(n = {model.world_size}, {model.backend})")\n'
            'bench[bench["op"] == "all_reduce"][["bytes", "time_us", "time_us_min", "busbw_bytes_per_s"]]'
        ),
        new_markdown_cell("The fit against what it was fitted on (the tests hold every size within 0.75x..1.33x):"),
        new_code_cell(
            'ar = bench[bench["op"] == "all_reduce"]\n'
            'pred = model.allreduce_time(ar["bytes"].to_numpy(), model.world_size) * 1e6\n'
            'pd.DataFrame({"bytes": ar["bytes"], "measured_us": ar["time_us_min"], "predicted_us": pred,\n'
            '              "ratio": pred / ar["time_us_min"]})'
        ),
        new_code_cell(
            'report.scaling_inputs(df, model)[["variant", "comm.payload_bytes_per_step", "compute_s", "overlap_s"]]'
        ),
        new_code_cell("report.fig_scaling(df, bench, links=(12.5e9, 50e9));"),
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
