"""Writes the analysis notebooks (stored without outputs). Edit here, then run:  python analysis/make_notebooks.py"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
PARAMS = '''import os

# The results to read: a .jsonl file or a directory of them. Default: the committed study in data/.
RESULTS = os.environ.get("DISTBENCH_RESULTS", "data")'''
SETUP = '''%matplotlib inline
import pandas as pd

from distbench.analysis import load_runs, summary_table
from distbench.report import fig_accuracy, fig_comm_savings, fig_throughput

pd.set_option("display.width", 200)
df = load_runs(RESULTS)
print(f"{len(df)} ok runs from {RESULTS}")'''

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
        new_code_cell("fig_comm_savings(df);"),
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
        new_code_cell("fig_throughput(df);"),
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
            'cols = ["config.model.model", "config.data.dataset", "variant", "params.conv_learned_fraction",\n'
            '        "params.trainable", "accuracy.top1", "accuracy.top5", "top1_delta"]\n'
            'df[cols].sort_values(["config.model.model", "params.conv_learned_fraction"])'
        ),
        new_code_cell("fig_accuracy(df);"),
        new_code_cell("summary_table(df)"),
    ],
}


def write(name: str, cells: list) -> Path:
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    path = HERE / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        print(write(name, cells))
