"""The GPU check: everything distbench should show on one GPU, prepared to fit a short loan (under 8 minutes).

In order, each step with its own time limit so that one that hangs cannot take the rest with it, and every
limit cut to what is left of the check's 8 minutes (`budget`), so that a slow machine leaves steps out rather
than run past the loan:
1. the gpu test tier (`pytest -m gpu`): NCCL, bf16 autocast, channels-last, the fast-hadamard-transform kernel;
2. ResNet-50 on ImageNet-shaped synthetic data (224 x 224) at 1K and 100K classes with the heads learned,
   fixed, fixed-fwht and fixed-srht: a few warm-up and 20 timed steps each, one rank per GPU; samples/s, step
   p50 / p90, peak memory and payload == expected from each run's record;
3. `harness_overhead.py` and `meter_overhead.py` side by side (one rank per GPU);
4. `fwht.py` at 100K and 1M classes: the CUDA path, and the kernel where the `gpu` extra is installed (the
   dense, fwht and srht heads; the orthogonal head's float64 QR of a 1M x 2048 matrix would take the loan).

Every figure is printed with the device's name, and everything is written under one folder: `runs.jsonl`
(distbench.run/1 records), `bench.jsonl` (distbench.bench/1), `gpu_tests.txt`, and `summary.md`, the table
the README takes. `--cpu-smoke` runs the same steps on the CPU at toy sizes in about a minute (the slow tier
does, so the script cannot rot unnoticed).

    python benchmarks/gpu_check.py --out gpu-check            # on the GPU machine
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/x   # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("learned", "fixed", "fixed-fwht", "fixed-srht")


def sizes(smoke: bool) -> dict:
    """The work of each step: the real check's, or the CPU smoke test's toy version of it."""
    if smoke:
        return {
            "model": ["--model", "tiny", "--image-size", "32"],
            "classes": [10, 1000],
            "run": ["--steps", "2", "--warmup-steps", "1", "--nosync-steps", "1", "--batch-size", "4"],
            "overhead": ["--blocks", "2", "--block-steps", "2"],
            "meter_floor": ["--floor-blocks", "2"],
            "fwht": ["--classes", "1000", "--batch", "4", "--reps", "1"],
            "limits": {"tests": 60, "run": 120, "overhead": 180, "fwht": 120},
            "budget": 900,  # generous: the smoke test runs on loaded CI cores, and a step left out fails it
        }
    return {
        "model": ["--model", "resnet50", "--image-size", "224"],
        "classes": [1000, 100_000],
        "run": ["--steps", "20", "--warmup-steps", "5", "--nosync-steps", "5", "--batch-size", "64"],
        "overhead": ["--blocks", "6", "--block-steps", "10"],
        "meter_floor": ["--floor-blocks", "6"],
        "fwht": ["--classes", "100000,1000000", "--heads", "dense,fwht,srht"],
        "limits": {"tests": 150, "run": 60, "overhead": 60, "fwht": 120},
        "budget": 480,  # the whole check: each limit is cut to what is left of it, so a 10-minute loan holds
    }


class Check:
    """Runs the steps, keeps what each printed, and writes the summary."""

    def __init__(self, out: Path, smoke: bool) -> None:
        self.out, self.smoke, self.sizes = out, smoke, sizes(smoke)
        out.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if smoke:
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        import torch

        self.gpus = torch.cuda.device_count() if not smoke else 0
        self.device = torch.cuda.get_device_name(0) if self.gpus else "CPU (smoke test)"
        # The two-rank benchmarks run one rank per GPU; with one GPU, one rank (two would time contention).
        self.env["DISTBENCH_BENCH_RANKS"] = str(max(1, min(self.gpus, 2))) if self.gpus else "2"
        self.lines: list[str] = [f"# GPU check on {self.device}", ""]
        self.failures: list[str] = []
        self.budget = self.sizes["budget"]
        self.deadline = time.monotonic() + self.budget

    def step(self, name: str, cmd: list[str], limit: int) -> subprocess.CompletedProcess | None:
        started = time.monotonic()
        left = int(self.deadline - started)
        if left < 5:
            self.failures.append(f"{name}: no time left of the check's {self.budget} s")
            print(f"   {name}: no time left of the check's {self.budget} s, left out", flush=True)
            return None
        limit = min(limit, left)
        print(f"== {name} ({self.device}): {' '.join(cmd)}", flush=True)
        try:
            done = subprocess.run(
                cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=limit, check=False
            )
        except subprocess.TimeoutExpired:
            self.failures.append(f"{name}: over its {limit} s")
            print(f"   {name}: over its {limit} s, left out", flush=True)
            return None
        took = time.monotonic() - started
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        print(f"   {name}: {status} in {took:.0f} s", flush=True)
        if done.returncode != 0:
            self.failures.append(f"{name}: {status}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        return done

    def tests(self) -> None:
        # one test at a time (-n 0): the tier shares one GPU, and some of it times kernels
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-m", "gpu", "tests"]
        if self.smoke:  # no GPU: the tier collects and skips; that it still collects is the point
            cmd += ["--collect-only"]
        done = self.step("gpu test tier", cmd, self.sizes["limits"]["tests"])
        if done is not None:
            (self.out / "gpu_tests.txt").write_text(done.stdout + done.stderr)
            last = [line for line in done.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
            self.lines += ["## gpu test tier", "", f"`pytest -m gpu`: {last[0]}", ""]

    def runs(self) -> None:
        runs = self.out / "runs.jsonl"
        nproc = max(self.gpus, 1) if not self.smoke else 2
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        rows = []
        for classes in self.sizes["classes"]:
            for head in HEADS:
                before = len(runs.read_text().splitlines()) if runs.exists() else 0
                args = [*self.sizes["model"], "--num-classes", str(classes), "--head", head, *self.sizes["run"]]
                cmd = [*torchrun, str(ROOT / "launch" / "run.py"), *args, "--eval-samples", "256", "--out", str(runs)]
                self.step(f"{head} at {classes:,} classes", cmd, self.sizes["limits"]["run"])
                new = runs.read_text().splitlines()[before:] if runs.exists() else []
                for record in (json.loads(line) for line in new):
                    rows.append(row(record))
        self.lines += [
            f"## {self.sizes['model'][1]} on synthetic {self.sizes['model'][3]} x {self.sizes['model'][3]} images",
            "",
            "| classes | head | samples/s | step p50 / p90 ms | peak memory GB | payload MB/step | == expected |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]

    def benchmarks(self) -> None:
        bench = self.out / "bench.jsonl"
        scripts = (
            ("harness_overhead", self.sizes["overhead"], "overhead"),
            ("meter_overhead", [*self.sizes["overhead"], *self.sizes["meter_floor"]], "overhead"),
            ("fwht", self.sizes["fwht"], "fwht"),
        )
        self.lines += ["## distbench's own benchmarks", ""]
        for script, args, limit in scripts:
            cmd = [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args, "--out", str(bench)]
            done = self.step(script, cmd, self.sizes["limits"][limit])
            if done is None or done.returncode != 0:
                continue
            figures = [line for line in done.stdout.splitlines() if ": " in line and not line.startswith(" ")]
            self.lines += [f"`{script}.py`:", "", *(f"- {line}" for line in figures[-12:]), ""]

    def finish(self) -> int:
        if self.failures:
            self.lines += ["## What did not finish", "", *(f"- {f}" for f in self.failures), ""]
        summary = "\n".join(self.lines)
        (self.out / "summary.md").write_text(summary)
        print(summary, flush=True)
        return 1 if self.failures else 0


def row(record: dict) -> str:
    c, p = record["comm"], record["perf"]
    if record["status"] != "ok":
        return f"| {record['config']['model']['num_classes']:,} | {record['config']['model']['head']} | " + (
            f"{record['status']}: {record['error']} | | | | |"
        )
    step = p["step_time_ms"]
    return (
        f"| {record['config']['model']['num_classes']:,} | {record['config']['model']['head']} | "
        f"{p['samples_per_s']:,.0f} | {step['p50']:.1f} / {step['p90']:.1f} | {p['peak_memory_bytes'] / 1e9:.2f} | "
        f"{c['payload_bytes_per_step'] / 1e6:,.1f} | {c['payload_bytes_per_step'] == c['expected_bytes_per_step']} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the records, the test log and summary.md")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same steps at toy sizes on the CPU (seconds)")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out: tests, runs, benchmarks")
    args = ap.parse_args(argv)
    check = Check(Path(args.out), args.cpu_smoke)
    if not args.cpu_smoke and not check.gpus:
        print("gpu_check.py: error: no CUDA device here (--cpu-smoke runs the steps on the CPU)", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    for name in ("tests", "runs", "benchmarks"):
        if name not in skip:
            getattr(check, name)()
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
