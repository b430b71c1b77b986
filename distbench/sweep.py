"""Sweeps: a TOML grid expands to a sweep file (one resolved configuration per JSON line), and each
line runs as one task, e.g. one Slurm array task. Runs are idempotent: a line whose run_id already has
an `ok` record in the results file is skipped, so a failed or preempted array can simply be resubmitted.

Grid file:

    [base.model]            # any [section] of a run config, as in `run.py --config`
    model = "tiny"
    [base.train]
    steps = 20
    [launch]                # how each line is started
    nproc_per_node = 2
    [sweep]                 # how the sweep treats its lines
    keep_checkpoints = true # a line keeps its last checkpoint: a line given more steps goes on from it
    [axes]                  # dotted config paths -> values; the sweep is their product
    "model.head" = ["learned", "fixed"]
    "model.num_classes" = [1000, 100000]
    # A linked axis: any name, each value a table of fields set together.
    budget = [{"model.num_classes" = 1000, "train.steps" = 100}, {"model.num_classes" = 100000, "train.steps" = 900}]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from distbench import results
from distbench.config import (
    SECTIONS,
    ConfigError,
    UnknownName,
    added_at_default,
    defaults,
    flag,
    from_dict,
    trajectory,
)
from distbench.model.structure.freeze import parse_rule
from distbench.model.structure.freeze import slug as freeze_slug
from distbench.runtime import checkpoint, stop
from distbench.runtime.checks import check

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_DEFAULTS = {"nproc_per_node": None, "nnodes": 1}  # None: GPUs on the node, else 1
# keep_checkpoints: a line keeps its last checkpoint after its record, for a line given more steps to go on from
SWEEP_DEFAULTS = {"keep_checkpoints": False}


TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"  # torchrun's default four, and SIGUSR1


class SweepError(ValueError):
    pass


# ------------------------------------------------------------------------------------------------ expand
def _set(tree: dict[str, dict[str, Any]], dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or not key:
        raise SweepError(f"axis {dotted!r}: name a config field as section.field; sections: {', '.join(SECTIONS)}")
    fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if key not in fields:
        raise SweepError(f"axis {dotted!r}: [{section}] has no field {key!r}; it takes: {', '.join(sorted(fields))}")
    tree.setdefault(section, {})[key] = value


def run_id_for(config: dict[str, Any], launch: dict[str, Any]) -> str:
    """Stable id from what the run does (config minus where it writes, plus how it is launched)."""
    what = added_at_default(trajectory(config))
    what["output"] = {k: v for k, v in what.get("output", {}).items() if k not in ("out", "run_id")}
    digest = hashlib.sha1(json.dumps([what, launch], sort_keys=True).encode()).hexdigest()[:10]
    base = defaults()
    m, f, d = ({**base[s], **config.get(s, {})} for s in ("model", "freeze", "dist"))
    parts = [m["model"], m["head"], f"c{m['num_classes']}"]
    try:
        rule = parse_rule(f["freeze"])
        if rule.kind != "none":
            parts += [freeze_slug(rule, f["freeze_dim"]), f["freeze_mode"]]
    except (ConfigError, UnknownName):  # a line kept to record its own failure
        parts.append("badfreeze")
    if d["backend"] != "ddp":
        parts.append(f"{d['backend']}{d['zero_stage']}")
    return "-".join([*parts, digest])


def expand(grid_path: str | os.PathLike, results: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Grid -> sweep lines, plus one warning per line whose config does not validate (such a line is
    kept: running it records `status: failed` with the reason, and the rest of the sweep goes on).
    `results`: the results file for every line, over the grid's own `[base.output] out`."""
    grid_path = Path(grid_path)
    try:
        grid = tomllib.loads(grid_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SweepError(f"{grid_path}: {e}") from None
    unknown = set(grid) - {"base", "axes", "launch", "sweep"}
    if unknown:
        raise SweepError(
            f"{grid_path}: unknown table(s) {sorted(unknown)}; use [base.<section>], [axes], [launch], [sweep]"
        )
    # How the sweep treats its lines, not what they run: no part of a line's id.
    sweep = grid.get("sweep", {})
    sweep = {**SWEEP_DEFAULTS, **sweep} if isinstance(sweep, dict) else {"": sweep}
    if set(sweep) - set(SWEEP_DEFAULTS) or not all(isinstance(v, bool) for v in sweep.values()):
        raise SweepError(f"{grid_path}: [sweep] takes {', '.join(f'{k} = true|false' for k in SWEEP_DEFAULTS)}")
    base = grid.get("base", {})
    launch_base = {**LAUNCH_DEFAULTS, **grid.get("launch", {})}
    if set(launch_base) - set(LAUNCH_DEFAULTS):
        raise SweepError(f"[launch] takes: {', '.join(LAUNCH_DEFAULTS)}")
    axes = grid.get("axes", {})
    for name, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"axis {name!r} must be a non-empty list")
    # Absolute, so that array tasks, `list` and notebooks agree wherever they run (a shared file system).
    out_default = str(Path("results").resolve() / f"{grid_path.stem}.jsonl")
    lines, warnings = [], []
    for combo in itertools.product(*axes.values()) if axes else [()]:
        tree = {s: dict(t) for s, t in base.items()}
        launch = dict(launch_base)
        for name, value in zip(axes, combo, strict=True):
            # A table value sets several fields together (a linked axis), e.g. classes with their steps.
            for dotted, v in value.items() if isinstance(value, dict) else [(name, value)]:
                if dotted.startswith("launch."):
                    launch[dotted.split(".", 1)[1]] = v
                else:
                    _set(tree, dotted, v)
        output = tree.setdefault("output", {})
        output["out"] = str(Path(results or output.get("out", out_default)).resolve())
        try:
            # Every line checkpoints (run_line gives it a directory), so --checkpoint-every is valid here
            # without one: checked against where the line's checkpoints will go, then left to run_line.
            own = "checkpoint_dir" in output
            if not own and output.get("checkpoint_every"):
                output["checkpoint_dir"] = str(Path(output["out"]).parent / "checkpoints")
            config = check(from_dict(tree)).to_dict()
            if not own:
                output.pop("checkpoint_dir", None)
                config["output"]["checkpoint_dir"] = None
        except (ConfigError, UnknownName) as e:
            warnings.append(f"line {len(lines)}: {e}")
            config = _defaults_overlaid(tree)
        config["output"]["run_id"] = None
        rid = run_id_for(config, launch)
        config["output"]["run_id"] = rid
        lines.append({"index": len(lines), "run_id": rid, "launch": launch, "config": config})
        if sweep["keep_checkpoints"]:
            lines[-1]["keep_checkpoint"] = True
    ids = [line["run_id"] for line in lines]
    if len(set(ids)) != len(ids):
        raise SweepError("the grid repeats a configuration (two lines with the same run_id)")
    return lines, warnings


def _defaults_overlaid(tree: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An invalid config, spelled out over the defaults without validating it."""
    out = {}
    for section, cls in SECTIONS.items():
        out[section] = {f.name: f.default for f in dataclasses.fields(cls)} | tree.get(section, {})
    return out


def write_sweep(lines: list[dict[str, Any]], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    os.replace(tmp, path)  # whole or not at all


def read_sweep(path: str | os.PathLike) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise SweepError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------- status
def statuses(lines: list[dict[str, Any]]) -> dict[str, str]:
    """run_id -> `ok` if any ok record exists, else the latest record's status, else `pending`."""
    seen: dict[str, str] = {}
    for out in {line["config"]["output"]["out"] for line in lines}:
        if Path(out).exists():
            for rec in results.read_records(out):
                if seen.get(rec["run_id"]) != "ok":
                    seen[rec["run_id"]] = rec["status"]
    return {line["run_id"]: seen.get(line["run_id"], "pending") for line in lines}


# ------------------------------------------------------------------------------------------------- run
def config_argv(config: dict[str, Any]) -> list[str]:
    """A resolved config as run.py flags (only values that differ from the defaults)."""
    argv = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = config.get(section, {}).get(f.name, f.default)
            if value == f.default:
                continue
            if isinstance(value, bool):
                argv.append(flag(f.name, negated=not value))
            elif value is not None:
                argv += [flag(f.name), str(value)]
    return argv


def nproc_per_node(launch: dict[str, Any]) -> int:
    if launch.get("nproc_per_node"):
        return int(launch["nproc_per_node"])
    gpus = os.environ.get("SLURM_GPUS_ON_NODE") or os.environ.get("SLURM_GPUS_PER_NODE", "")
    count = gpus.split(":")[-1]  # SLURM_GPUS_PER_NODE may name the type: "a100:8"
    return int(count) if count.isdigit() and int(count) > 0 else 1


def node_count(launch: dict[str, Any]) -> int:
    """Nodes of one task: Slurm's allocation where there is one, else the grid's `[launch] nnodes`."""
    return int(os.environ.get("SLURM_NNODES", launch.get("nnodes") or 1))


def torchrun_argv(launch: dict[str, Any]) -> list[str]:
    """torchrun for this task: standalone on one node; on several (srun, one task per node) a c10d
    rendezvous on the first node of the allocation, at a port derived from the job id."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    nnodes = node_count(launch)
    # SIGUSR1 too: torchrun then passes it to the ranks (which checkpoint) instead of dying of it.
    argv = [torchrun, f"--nproc_per_node={nproc_per_node(launch)}", f"--signals-to-handle={TORCHRUN_SIGNALS}"]
    if nnodes <= 1:
        return [*argv, "--standalone"]
    head = subprocess.run(
        ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "0"))
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
    port = 20000 + (int(job) * 97 + int(task)) % 20000
    return [
        *argv,
        f"--nnodes={nnodes}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={head}:{port}",
        f"--rdzv_id={job}_{task}",
    ]


def checkpoint_dir(line: dict[str, Any]) -> Path:
    """Where a line checkpoints: its own --checkpoint-dir, else `checkpoints/<run_id>` beside its results
    file (DISTBENCH_CHECKPOINTS moves that root, e.g. to a faster file system)."""
    own = line["config"].get("output", {}).get("checkpoint_dir")
    if own:
        return Path(own)
    root = os.environ.get("DISTBENCH_CHECKPOINTS") or Path(line["config"]["output"]["out"]).parent / "checkpoints"
    return Path(root) / line["run_id"]


def shorter(line: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a line of a sweep that keeps its checkpoints goes on from when it has none of its own: of the
    same training on as many ranks given other --steps, beside it, at a step the line has not passed (a line that
    ended, kept, or one stopped), the furthest: its directory and `latest`, or None."""
    ckpt = checkpoint_dir(line)
    if not line.get("keep_checkpoint") or line["config"]["output"].get("checkpoint_dir"):
        return None
    if checkpoint.read_latest(ckpt) is not None:
        return None
    found, ranks = [], nproc_per_node(line["launch"]) * node_count(line["launch"])
    for other in ckpt.parent.glob(f"*/{checkpoint.LATEST}"):
        # Another line's `latest` that does not read (mid-write elsewhere, damaged) is simply not a candidate.
        with contextlib.suppress(checkpoint.CheckpointError, TypeError, KeyError, AttributeError, ValueError):
            latest = checkpoint.read_latest(other.parent)
            if latest and latest["world_size"] == ranks and checkpoint.continues(latest, line["config"]):
                found.append((latest["step"], other.parent.name, latest))
    if not found:
        return None
    _, name, latest = max(found, key=lambda f: f[:2])
    return ckpt.parent / name, latest


def continue_shorter(line: dict[str, Any]) -> str | None:
    """Give a line without a checkpoint the one it goes on from (`shorter`), linked into its own directory:
    what it says, or None when there is none."""
    if (found := shorter(line)) is None:
        return None
    source, latest = found
    try:
        checkpoint.adopt(source, latest, checkpoint_dir(line))
    except OSError:  # that line moved on and removed it, or this line's directory gained a checkpoint meanwhile
        return None
    return f"continue {line['run_id']} from {latest['run_id']} at step {latest['step']:,} (its checkpoint in {source})"


def progress(line: dict[str, Any], status: str) -> str:
    """Where a line stands beyond its record's status: its checkpoint's step, or the one it would go on from."""
    try:
        latest = checkpoint.read_latest(checkpoint_dir(line))
        if latest is not None:
            kept = " kept" if status == "ok" else ""
            stopped = " (stopped by a signal)" if latest.get("stopped") and status != "ok" else ""
            at = f"checkpoint{kept} at step {latest['step']:,} of {checkpoint.end_step(line['config']):,}{stopped}"
            # A recorded line's final evaluation is in its record, after the checkpoint's last curve point.
            return at + ("" if status == "ok" else _curve_end(latest.get("curve_end")))
        if status != "ok" and (found := shorter(line)) is not None:
            return f"would continue {found[1]['run_id']} from step {found[1]['step']:,}"
    except checkpoint.CheckpointError as e:
        return str(e)
    return ""


def _curve_end(point: Any) -> str:
    """The last learning-curve point a checkpoint holds, in words ("" without one, or with one not distbench's)."""

    def number(key: str) -> bool:
        value = point.get(key)
        return (isinstance(value, float) and math.isfinite(value)) or (type(value) is int and abs(value) < 1e18)

    if not isinstance(point, dict) or not (number("samples_per_class") and number("top1")):
        return ""
    loss = f"held-out loss {point['eval_loss']:.3f}, " if number("eval_loss") else ""
    spc = point["samples_per_class"]
    spc = f"{spc:,.0f}" if spc >= 100 or spc == int(spc) else f"{spc:.3g}"
    return f"; {loss}top-1 {100 * point['top1']:.1f}% at {spc} samples per class"


def _stopped_since(directory: Path, since: float) -> bool:
    """Whether the run saved a checkpoint on a signal after `since` (a preempted run, not a failed one)."""
    try:
        latest = checkpoint.read_latest(directory)
    except checkpoint.CheckpointError:
        return False
    stamp = (directory / checkpoint.LATEST).stat().st_mtime if latest else 0
    return latest is not None and bool(latest.get("stopped") or latest["reason"].startswith("SIG")) and stamp >= since


def run_line(line: dict[str, Any], force: bool = False, relay: _Relay | None = None) -> int:
    """Run one sweep line unless an ok record for it exists. If the run ends without writing a record
    (bad config: exit 2; a crash before the record), append a `failed` record with its last error line.

    Every line checkpoints (`checkpoint_dir`): a line stopped by a signal exits EXIT_STOPPED with no
    record, and running it again resumes it. The checkpoint is removed once the line has its ok record, unless
    its sweep keeps checkpoints (`[sweep] keep_checkpoints`): a line of the same training given more steps then
    goes on from it (`continue_shorter`).
    `relay`: the walk's signal relay (`run_all`); alone, the line has its own."""
    if relay is None:
        with _relaying_signals() as own:
            return run_line(line, force, own)
    out = line["config"]["output"]["out"]
    if not force and statuses([line])[line["run_id"]] == "ok":
        print(f"skip {line['run_id']}: an ok record exists in {out}")
        return 0
    ckpt = checkpoint_dir(line)
    with contextlib.suppress(checkpoint.CheckpointError):
        # A kept checkpoint of this very line, recorded: run again (--force, or its record gone), it starts afresh.
        if (own := checkpoint.read_latest(ckpt)) and own.get("recorded") and checkpoint.same_run(own, line["config"]):
            shutil.rmtree(ckpt)
    if said := continue_shorter(line):
        print(said, flush=True)
    config = {**line["config"], "output": {**line["config"]["output"], "checkpoint_dir": str(ckpt)}}
    cmd = [*torchrun_argv(line["launch"]), str(ROOT / "launch" / "run.py"), *config_argv(config)]
    print("run", shlex.join(cmd), flush=True)
    before = {r["run_id"] for r in results.read_records(out)} if Path(out).exists() else set()
    started, since = results.now(), time.time() - 1  # file times have coarser steps than time.time()
    # Its own session: a Ctrl-C in the terminal reaches torchrun once, passed on from here, not twice.
    proc = relay.start(cmd)
    tail: collections.deque[str] = collections.deque(maxlen=200)  # for a failed record: all of it, unfiltered

    def kept(stream: Iterable[str]) -> Iterator[str]:
        for text in stream:
            tail.append(text.rstrip())
            yield text

    for text in _without_launcher_traceback(kept(proc.stderr)):  # pass stderr through
        sys.stderr.write(text)
    code = relay.wait()
    wrote = Path(out).exists() and line["run_id"] in {r["run_id"] for r in results.read_records(out)} - before
    if code != 0 and not wrote and (_stopped_since(ckpt, since) or relay.received):
        # A signal that reached torchrun before it could handle one (its start-up) ends it at once, with no
        # checkpoint: the line was stopped, not failed, and starts again next time.
        print(f"stopped {line['run_id']}: checkpoint in {ckpt}; run the line again to resume", flush=True)
        return stop.EXIT_STOPPED
    if code != 0 and not wrote:
        ours = [t for t in tail if t.startswith("run.py: error:")]
        error = (ours or [t for t in tail if t.strip()] or [f"exit status {code}"])[-1]
        try:
            results.append(out, results.failed_record(line["run_id"], line["config"], error, started))
        except OSError as e:  # a full disk: the line's own output above says what happened
            print(f"could not record {line['run_id']} as failed in {out}: {e}", file=sys.stderr, flush=True)
    if wrote and statuses([line])[line["run_id"]] == "ok" and not line.get("keep_checkpoint"):
        shutil.rmtree(ckpt, ignore_errors=True)
    return code


_LAUNCHER_SIGNALLED = "torch.distributed.elastic.multiprocessing.api.SignalException:"
_CHAINS = ("During handling of the above exception", "The above exception was the direct cause")


def _without_launcher_traceback(stream: Iterable[str]) -> Iterator[str]:
    """`stream` less torchrun's own traceback of the signal that stopped it: torchrun, signalled, passes the
    signal on, waits for its ranks to checkpoint and exit, and then re-raises it as a `SignalException` with a
    Python traceback of its launcher. The line stopped as it should, but the log read as a crash. Any other
    traceback, one cut short by another line, or one that is a link of a chain (a second signal that cut
    torchrun's shutdown short; another error while it ended) passes whole."""
    held: list[str] = []  # a traceback being read
    dropped: list[str] = []  # torchrun's, left out unless the next line chains another traceback to it
    chained = False  # the last line out said that a traceback follows from the one before
    for text in stream:
        if dropped:
            if not text.strip():
                dropped.append(text)
                continue
            if text.startswith(_CHAINS):
                yield from dropped
            dropped = []
        if not held and not text.startswith("Traceback (most recent call last):"):
            chained = text.startswith(_CHAINS) if text.strip() else chained
            yield text
            continue
        held.append(text)
        if len(held) > 1 and not text[:1].isspace():  # the exception's line ends a traceback
            launcher = text.startswith(_LAUNCHER_SIGNALLED) and all(t[:1].isspace() for t in held[1:-1])
            if launcher and not chained:
                dropped = held
            else:
                yield from held
            held, chained = [], False
    yield from held


def run_all(lines: list[dict[str, Any]]) -> int:
    """Every line in turn, as `run_line` runs one: lines with an ok record are skipped and stopped ones resume
    from their checkpoints, so the same command after an interruption goes on where it stopped. A signal, at
    any moment of the walk, ends it (EXIT_STOPPED) once the line it reached has stopped (or finished); a failed
    line is recorded and the walk goes on."""
    failed = 0
    with _relaying_signals() as relay:
        for line in lines:
            if relay.received:
                print(f"run-all: stopped by {signal.Signals(relay.received).name} between lines", flush=True)
                return stop.EXIT_STOPPED
            code = run_line(line, relay=relay)
            if code == stop.EXIT_STOPPED or relay.received:
                return stop.EXIT_STOPPED
            failed += code != 0
    print(f"run-all: {len(lines)} lines, {failed} failed", flush=True)
    return 1 if failed else 0


class _Relay:
    """The signals a sweep receives while it walks: the first one is noted (it ends the walk) and each is passed
    to the running line's torchrun, which passes it to the ranks. Inside a Slurm job step, Slurm signals every
    process of the step, the run's ranks included: there they are only noted."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, cmd: list[str]) -> subprocess.Popen:
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
        if self.received:  # it came while the child was being made: the child has not seen it
            self._pass(self.received)
        return self.proc

    def wait(self) -> int:
        code = self.proc.wait()
        self.proc = None
        return code

    def handle(self, signum: int, frame) -> None:
        self.received = self.received or signum
        self._pass(signum)

    def _pass(self, signum: int) -> None:
        if self.proc is not None and "SLURM_STEP_ID" not in os.environ:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


@contextlib.contextmanager
def _relaying_signals():
    """SIGTERM, SIGINT and SIGUSR1 must not end this process before its run has checkpointed: for as long as
    the walk lasts (between lines too), they go to a `_Relay`."""
    relay = _Relay()
    previous = {s: signal.signal(s, relay.handle) for s in stop.SIGNALS}
    try:
        yield relay
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------------- submit
def sbatch_command(
    sweep: str | os.PathLike, n: int, parallel: int | None, nodes: int, extra: list[str], logs: str = "logs"
) -> list[str]:
    array = f"0-{n - 1}" + (f"%{parallel}" if parallel else "")
    # Slurm runs a copy of the script: tell it where this checkout and its Python are.
    export = f"--export=ALL,DISTBENCH_ROOT={ROOT},DISTBENCH_PYTHON={sys.executable}"
    return [
        "sbatch",
        f"--array={array}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        export,
        f"--job-name=distbench-{Path(sweep).stem}",
        f"--output={Path(logs).resolve()}/%A_%a.out",
        *extra,
        str(ROOT / "launch" / "slurm" / "array.sbatch"),
        str(Path(sweep).resolve()),
    ]


def submit(
    sweep: str | os.PathLike,
    parallel: int | None = None,
    extra: list[str] | None = None,
    dry_run: bool = False,
    logs: str = "logs",
) -> str:
    lines = read_sweep(sweep)
    if not lines:
        raise SweepError(f"{sweep} has no lines")
    nodes = max(int(line["launch"].get("nnodes") or 1) for line in lines)
    cmd = sbatch_command(sweep, len(lines), parallel, nodes, extra or [], logs)
    if dry_run:
        script = (ROOT / "launch" / "slurm" / "array.sbatch").read_text()
        return f"# {shlex.join(cmd)}\n{script}"
    if shutil.which("sbatch") is None:
        raise SweepError("sbatch not found: is this a Slurm login node? (--dry-run prints the script)")
    Path(logs).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SweepError(f"sbatch failed: {done.stderr.strip()}")
    return done.stdout.strip()


# ------------------------------------------------------------------------------------------------ the CLI
USAGE = """distbench sweeps: expand a TOML grid, list, run one line, or submit the whole sweep as a Slurm array.

python launch/sweep.py expand launch/sweeps/heads.toml -o sweeps/heads.jsonl
python launch/sweep.py list sweeps/heads.jsonl
python launch/sweep.py run sweeps/heads.jsonl --index 3      # what one array task does
python launch/sweep.py run-all sweeps/heads.jsonl            # every line in turn, on this machine
python launch/sweep.py submit sweeps/heads.jsonl --parallel 8 [--dry-run] [-- SBATCH ARGS...]
"""


def main(argv: list[str] | None = None, prog: str = "sweep.py") -> int:
    p = argparse.ArgumentParser(prog="py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("expand", help="grid TOML -> sweep file (one resolved config per line)")
    e.add_argument("grid")
    e.add_argument("-o", "--out", required=True)
    e.add_argument("--results", help="results file for every line (default: the grid's, else results/GRID.jsonl)")
    ls = sub.add_parser(
        "list", help="index, run_id, status (from the results file) and where a line's checkpoint stands"
    )
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
            lines, warnings = expand(args.grid, args.results)
            for w in warnings:
                print(f"{prog}: warning: {w} (the line is kept and will record status failed)", file=sys.stderr)
            write_sweep(lines, args.out)
            print(f"{len(lines)} configurations -> {args.out}")
        elif args.cmd == "list":
            lines = read_sweep(args.sweep)
            for line, status in zip(lines, statuses(lines).values(), strict=True):
                print(f"{line['index']:>4}  {line['run_id']:<40} {status:<8} {progress(line, status)}".rstrip())
        elif args.cmd == "run":
            lines = read_sweep(args.sweep)
            if not 0 <= args.index < len(lines):
                print(
                    f"{prog}: error: --index {args.index} is out of range: {args.sweep} has {len(lines)} lines",
                    file=sys.stderr,
                )
                return 2
            return run_line(lines[args.index], force=args.force)
        elif args.cmd == "run-all":
            return run_all(read_sweep(args.sweep))
        else:
            print(submit(args.sweep, args.parallel, sbatch_args, args.dry_run, args.logs))
    except SweepError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
