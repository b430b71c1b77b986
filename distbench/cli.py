"""`distbench`: one command for everything the project runs. Each subcommand is a module's own `main`, so
`distbench X --help` is that module's help; this file only dispatches, and imports nothing heavy before it
knows which one is wanted (a run must install its signal handling before torch loads).

    distbench run --head fixed                              # one process; under torchrun: torchrun -m distbench run
    distbench sweep expand analysis/heads.toml -o s.jsonl   # then list, run, run-all, submit
    distbench plan --model resnet50 --num-classes 100000 --gpus 8,64
    distbench report analysis/data --out analysis/figures
    distbench counts --models resnet18 resnet50
    distbench commbench --max-bytes 4M                      # under torchrun for several ranks
    distbench fit analysis/data/commbench_measured.jsonl    # the `measured` interconnect preset
    distbench corpus --vocab 8192 --out data/pystdlib-8k    # token files for --dataset tokens
    distbench docs [--check]                                # the generated pages and tables
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str]) -> int:
    from distbench.runtime.stop import REQUEST

    REQUEST.install()  # before the run's imports: see distbench.runtime.stop
    from distbench.runtime.main import main

    return main(argv)


def _sweep(argv: list[str]) -> int:
    from distbench.sweep import main

    return main(argv, prog="distbench sweep")


def _plan(argv: list[str]) -> int:
    from distbench.perfmodel.plan import main

    return main(argv)


def _report(argv: list[str]) -> int:
    from distbench.results.report import main

    return main(argv)


def _counts(argv: list[str]) -> int:
    from distbench.perfmodel.counts import main

    main(argv)
    return 0


def _commbench(argv: list[str]) -> int:
    from distbench.perfmodel.commbench import main

    return main(argv, prog="distbench commbench")


def _fit(argv: list[str]) -> int:
    from distbench.perfmodel.costmodel import main

    return main(["--fit-preset", *argv] if argv and not argv[0].startswith("-") else argv)


def _corpus(argv: list[str]) -> int:
    from distbench.runtime.data.corpus import main

    return main(argv)


def _docs(argv: list[str]) -> int:
    import argparse

    about = "write the generated pages (docs/cli.md, docs/record.md) and the tables made from the committed records"
    p = argparse.ArgumentParser(prog="distbench docs", description=about)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when any is out of date")
    args = p.parse_args(argv)
    stale = write_docs(check=args.check)
    for path in stale:
        print(f"{path}: {'out of date' if args.check else 'written'}")
    return 1 if args.check and stale else 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "run": (_run, "train one configuration and append its record (torchrun -m distbench run for several ranks)"),
    "sweep": (_sweep, "expand a grid into a sweep; list, run one line or all, or submit a Slurm array"),
    "plan": (_plan, "project a saving to a GPU cluster: bytes, collective and step times per head and GPU count"),
    "report": (_report, "figures and tables from records"),
    "counts": (_counts, "parameter and byte counts per freeze rule and parameterisation (meta device)"),
    "commbench": (_commbench, "collective micro-benchmark (nccl-tests style), under torchrun"),
    "fit": (_fit, "fit the `measured` interconnect preset to commbench records"),
    "corpus": (_corpus, "a real text corpus for the language models: the Python standard library, BPE-tokenized"),
    "docs": (_docs, "write the generated pages and the tables made from the records (--check: only compare)"),
}


def generated_docs() -> dict[Path, str]:
    """The reference pages made from the code: the flags from the config dataclasses, the record's fields from
    its schema table."""
    from distbench.config import markdown as cli_markdown
    from distbench.results.schema import markdown as record_markdown

    return {ROOT / "docs" / "cli.md": cli_markdown(), ROOT / "docs" / "record.md": record_markdown()}


def write_docs(check: bool = False) -> list[Path]:
    """Every generated page and block that differs from what its sources make now: written unless `check`.
    The pages (cli.md, record.md) and the planner's projection in docs/language-models.md come from the code;
    the engines table in docs/engines.md, the heads and head-scaling tables in docs/results.md, the study tables
    in docs/language-models.md and the benchmark tables
    in README.md and benchmarks/README.md from the committed records (benchmarks/tables.py, in a checkout)."""
    from distbench.results.blocks import update_block
    from distbench.results.report import LM_PAGE_BLOCKS, engines_block, head_scaling_block, heads_block, lm_block

    stale = []
    for path, text in generated_docs().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not check:
                path.write_text(text)
    from distbench.perfmodel.counts import COUNTS_MODELS, table
    from distbench.perfmodel.plan import lm_plan_block

    blocks = [
        (ROOT / "docs" / "engines.md", "engines-table", engines_block()),
        (ROOT / "docs" / "results.md", "heads-table", heads_block()),
        (ROOT / "docs" / "results.md", "head-scaling-table", head_scaling_block()),
        (ROOT / "docs" / "structure.md", "counts-table", table(list(COUNTS_MODELS), 1000)),
        *((ROOT / "docs" / "language-models.md", name, lm_block(name)) for name in LM_PAGE_BLOCKS),
        (ROOT / "docs" / "language-models.md", "lm-plan-table", lm_plan_block()),
    ]
    tables = ROOT / "benchmarks" / "tables.py"
    if tables.exists():
        import importlib.util

        sys.path.insert(0, str(tables.parent))  # tables.py imports its neighbours (records.py)
        spec = importlib.util.spec_from_file_location("distbench_bench_tables", tables)
        bench = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = bench  # dataclasses look their module up there
        spec.loader.exec_module(bench)
        records = bench.latest_records(ROOT / "benchmarks" / "data")
        blocks += [
            (ROOT / "benchmarks" / "README.md", "bench-table", bench.full_table(records)),
            (ROOT / "README.md", "bench-table", bench.short_table(records)),
        ]
    for path, name, block in blocks:
        if update_block(path, name, block, check=check):
            stale.append(path)
    return stale


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: distbench COMMAND [ARGS...]   (distbench COMMAND --help for its own)\n\ncommands:\n" + "\n".join(
        lines
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"distbench: error: unknown command {name!r}{hint}; choose from: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][0](rest)
    except BrokenPipeError:
        from distbench.config import reader_gone

        return reader_gone()


if __name__ == "__main__":
    sys.exit(main())
