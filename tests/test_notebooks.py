"""Every analysis notebook runs headless against results that real runs produce here."""

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import FAST, ROOT, TORCHRUN, run_cmd, torchrun_many

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
ANALYSIS = ROOT / "analysis"
NOTEBOOKS = sorted(ANALYSIS.glob("*.ipynb"))


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    variants = [
        ["--head", "learned"],
        ["--head", "fixed", "--profile-dir", str(d / "traces")],
        ["--head", "fixed", "--freeze", "fraction:0.5"],
        ["--head", "learned", "--freeze", "fraction:0.5"],
        ["--head", "learned", "--num-classes", "20"],  # a second class count: tables group by it
    ]
    torchrun_many([[*FAST, "--num-classes", "10", *args] for args in variants], d / "runs.jsonl")
    # the scaling notebook fits its cost model to a real collective benchmark
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "launch" / "commbench.py"),
        "--ops",
        "all_reduce",
        "--min-bytes",
        "4K",
        "--max-bytes",
        "1M",
        "--iters",
        "1",
        "--repeats",
        "20",
        "--out",
        str(d / "commbench.jsonl"),
    ]
    p = run_cmd(cmd, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return d


def test_make_notebooks_regenerates_the_committed_notebooks(tmp_path):
    sys.path.insert(0, str(ANALYSIS))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(ANALYSIS))
    assert sorted(make_notebooks.NOTEBOOKS) == [p.stem for p in NOTEBOOKS]
    for name, cells in make_notebooks.NOTEBOOKS.items():
        fresh = make_notebooks.write(name, cells, out=tmp_path)
        assert fresh.read_text() == (ANALYSIS / f"{name}.ipynb").read_text(), f"{name}: run analysis/make_notebooks.py"


def test_notebooks_are_stored_without_outputs():
    assert NOTEBOOKS, "no notebooks in analysis/"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.fixture(scope="module")
def sparse_dirs(results_dir, tmp_path_factory) -> dict[str, Path]:
    """Results as the tools also leave them: one fixed-head run with no baseline and no collective benchmark
    beside a failed record and a torn line; and no ok run at all."""
    runs = (results_dir / "runs.jsonl").read_text().splitlines()
    fixed = next(line for line in runs if '"head": "fixed"' in line and '"freeze": "none"' in line)
    failed = json.dumps(json.loads(fixed) | {"status": "failed", "error": "killed"})
    d = {name: tmp_path_factory.mktemp(name) for name in ("sparse", "empty")}
    (d["sparse"] / "runs.jsonl").write_text(f'{fixed}\n{failed}\n{{"torn": \n')
    (d["empty"] / "runs.jsonl").write_text(f"{failed}\n")
    return d


def execute(path: Path, results: list[Path], monkeypatch) -> list[list[dict]]:
    """Run the notebook at `path` once on each of `results`, in one kernel, as a reader pointing it at other
    results would; each pass's outputs, every cell's. Each pass starts from an emptied namespace (`%reset -f`);
    the kernel's start-up and what its modules cache (the planner's counts) are paid once. Raises if any
    cell fails."""
    # the kernel must be this environment's Python, whatever PATH says
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    client = nbclient.NotebookClient(
        nbformat.v4.new_notebook(), timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ANALYSIS)}}
    )
    passes = []
    with client.setup_kernel():
        for d in results:
            # a cell of its own notebook: execute_cell stores the cell it ran at its index in client.nb
            point = nbformat.v4.new_code_cell(f"%reset -f\nimport os\nos.environ['DISTBENCH_RESULTS'] = {str(d)!r}")
            client.nb = nbformat.v4.new_notebook(cells=[point])
            client.execute_cell(point, 0)
            client.nb = nb = nbformat.read(path, as_version=4)
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)  # raises CellExecutionError, naming the cell, if it fails
            passes.append([o for c in nb.cells if c.cell_type == "code" for o in c.outputs])
    return passes


def text(outputs: list[dict]) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_says_what_is_missing_instead_of_failing(path, results_dir, sparse_dirs, monkeypatch):
    full, sparse, empty = execute(path, [results_dir, sparse_dirs["sparse"], sparse_dirs["empty"]], monkeypatch)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in full)
    assert f"ok runs from {results_dir}" in text(full)
    if path.stem == "throughput":  # the profiled run's CPU traces: Perfetto yes, HTA's overlap no, and why
        assert "hold no GPU kernels" in text(full)
    assert "1 ok runs" in text(sparse)
    if path.stem == "scaling":
        assert "no commbench records" in text(sparse) and "no commbench records" not in text(full)
    assert "no ok runs in" in text(empty)


def test_report_writes_pngs_and_a_table(results_dir, tmp_path):
    from distbench.results import report
    from distbench.results.report import write_report

    written = write_report(results_dir, tmp_path / "report")
    pngs = [p for p in written if p.suffix == ".png"]
    # five figures, the planner on these runs, and throughput for each study (here one: runs.jsonl)
    assert sorted(p.stem for p in pngs) == sorted([*report.FIGURES, "scaling", "throughput-runs"])
    assert all(p.stat().st_size > 5000 for p in pngs)
    table = (tmp_path / "report" / "summary.md").read_text()
    assert "fixed head, fraction:0.5" in table and table.count("\n") >= 6
