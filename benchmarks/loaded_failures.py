"""Do the failure tests hold on a busy machine? Runs them several times in a row while CPU-bound processes
keep every core busy, as another job on a shared CI machine would, and prints how many runs passed.

The failure tests (signals at every phase, preemption and resume, a hung rank, two hosts) wait for what a job
shows, never for a fixed time; this is the check that they do. Run on purpose, not in a test tier:

    python benchmarks/loaded_failures.py                # 5 runs, 2 busy processes beside them
    python benchmarks/loaded_failures.py --runs 1 --busy 0
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SELECTION = "two_host or preempt or resume or rank_fail or signal"


def spin() -> None:
    while True:  # a CPU-bound neighbour: pure Python arithmetic, no I/O
        sum(i * i for i in range(10_000))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="times to run the selection (default 5)")
    p.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside the tests (default 2)")
    p.add_argument("-k", default=SELECTION, help=f"pytest selection (default: {SELECTION!r})")
    args = p.parse_args(argv)
    hogs = [mp.get_context("fork").Process(target=spin, daemon=True) for _ in range(args.busy)]
    for h in hogs:
        h.start()
    passed = 0
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", args.k, "tests"]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            took = time.monotonic() - started
            summary = [line for line in done.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
            ok = done.returncode == 0
            passed += ok
            print(f"run {run}: {'passed' if ok else 'FAILED'} in {took:.0f} s: {summary[0]}", flush=True)
            if not ok:
                print(done.stdout[-4000:], flush=True)
    finally:
        for h in hogs:
            h.kill()
    print(f"loaded_failures: {passed}/{args.runs} runs passed with {args.busy} busy processes beside them")
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
