"""distbench sweeps: expand a TOML grid, list, run one line, or submit the whole sweep as a Slurm array.

python launch/sweep.py expand launch/sweeps/heads.toml -o sweeps/heads.jsonl
python launch/sweep.py list sweeps/heads.jsonl
python launch/sweep.py run sweeps/heads.jsonl --index 3      # what one array task does
python launch/sweep.py run-all sweeps/heads.jsonl            # every line in turn, on this machine
python launch/sweep.py submit sweeps/heads.jsonl --parallel 8 [--dry-run] [-- SBATCH ARGS...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distbench import sweep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("expand", help="grid TOML -> sweep file (one resolved config per line)")
    e.add_argument("grid")
    e.add_argument("-o", "--out", required=True)
    e.add_argument("--results", help="results file for every line (default: the grid's, else results/GRID.jsonl)")
    ls = sub.add_parser("list", help="index, run_id, status (from the results file)")
    ls.add_argument("sweep")
    r = sub.add_parser("run", help="run line INDEX unless an ok record exists")
    r.add_argument("sweep")
    r.add_argument("--index", type=int, required=True)
    r.add_argument("--force", action="store_true", help="run even if an ok record exists")
    a = sub.add_parser(
        "run-all",
        help="run every line in turn on this machine (done lines skipped, stopped ones resumed); stops at the "
        "first line stopped by a signal (exit 75: run it again to go on)",
    )
    a.add_argument("sweep")
    s = sub.add_parser("submit", help="submit the sweep as one Slurm job array")
    s.add_argument("sweep")
    s.add_argument("--parallel", type=int, help="at most this many array tasks at once (%%P)")
    s.add_argument("--logs", default="logs", help="directory for the %%A_%%a.out task logs")
    s.add_argument("--dry-run", action="store_true", help="print the sbatch command and script, submit nothing")
    p.epilog = "submit: sbatch arguments go after --, e.g. -- --partition=gpu --gres=gpu:8 --time=2:00:00"
    argv = sys.argv[1:] if argv is None else list(argv)
    sbatch_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        if args.cmd == "expand":
            lines, warnings = sweep.expand(args.grid, args.results)
            for w in warnings:
                print(f"sweep.py: warning: {w} (the line is kept and will record status failed)", file=sys.stderr)
            sweep.write_sweep(lines, args.out)
            print(f"{len(lines)} configurations -> {args.out}")
        elif args.cmd == "list":
            lines = sweep.read_sweep(args.sweep)
            for line, status in zip(lines, sweep.statuses(lines).values(), strict=True):
                print(f"{line['index']:>4}  {line['run_id']:<40} {status}")
        elif args.cmd == "run":
            lines = sweep.read_sweep(args.sweep)
            if not 0 <= args.index < len(lines):
                print(
                    f"sweep.py: error: --index {args.index} is out of range: {args.sweep} has {len(lines)} lines",
                    file=sys.stderr,
                )
                return 2
            return sweep.run_line(lines[args.index], force=args.force)
        elif args.cmd == "run-all":
            return sweep.run_all(sweep.read_sweep(args.sweep))
        else:
            print(sweep.submit(args.sweep, args.parallel, sbatch_args, args.dry_run, args.logs))
    except sweep.SweepError as err:
        print(f"sweep.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
