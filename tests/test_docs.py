"""The generated references and tables are current, and the docs say what the code does."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_generated_docs_and_tables_are_current():
    """docs/cli.md, docs/record.md, the engines table and the benchmark tables: `distbench docs` makes them;
    a change to the config, the schema or the committed records without it fails here."""
    from distbench.cli import write_docs

    assert write_docs(check=True) == [], "run: distbench docs"


def test_the_record_reference_is_the_schema():
    from distbench.results.schema import FIELDS, SPEC, markdown

    page = markdown()
    assert all(f"| `{f.path}` |" in page for f in FIELDS)
    assert set(SPEC["accuracy"]) >= {"top1", "eval_loss", "curve"}  # eval_loss: once missing from the schema


def test_distbench_command_lists_its_subcommands():
    r = subprocess.run(
        [sys.executable, "-m", "distbench", "--help"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert r.returncode == 0
    for name in ("run", "sweep", "plan", "report", "counts", "commbench", "fit", "docs"):
        assert f"\n  {name} " in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "distbench", "swep"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert r.returncode == 2 and "did you mean 'sweep'" in r.stderr


def test_readme_is_short_and_links_every_topic_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert len(pages) >= 6
    for page in pages:
        assert f"(docs/{page})" in readme, page


def test_committed_records_carry_no_path_of_the_machine_they_ran_on():
    from distbench.results import read_records

    for path in sorted((ROOT / "analysis" / "data").glob("*.jsonl")):
        for record in read_records(path):
            output = (record.get("config") or {}).get("output", {})
            for key in ("out", "checkpoint_dir"):
                assert not str(output.get(key) or "").startswith("/"), (path.name, record["run_id"], key)


def test_every_relative_link_and_image_in_the_docs_resolves():
    """A renamed figure or a page moved into docs/ must not leave a link that leads nowhere."""
    import re

    from conftest import ROOT

    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if not path or "://" in path or path.startswith("mailto:"):
                continue
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
