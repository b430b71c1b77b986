"""Checkpoints and preemption: save a run at a step boundary, resume it exactly, stop it on a signal.

Layout of `--checkpoint-dir DIR`:
    DIR/step-00000120/engine-rank{r}.pt   the engine's state (model, optimizer, loss scaler, comm-hook
                                          state; DeepSpeed: its own checkpoint files instead)
    DIR/step-00000120/loop-rank{r}.pt     the loop's state: steps taken, the timed window's step times and
                                          traffic so far, the last loss, RNG states
    DIR/latest                            JSON: which step directory is complete, for which config
Every rank writes its own files (BatchNorm statistics and RNG states differ per rank), each by rename;
rank 0 writes `latest` (by rename) only after every rank has finished, so a reader finds the previous
complete checkpoint or the new complete one, never a half-written one. Older step directories are
removed after `latest` moves on.

A signal (SIGTERM: Slurm's preemption and time limit, torchrun's shutdown; SIGUSR1: Slurm's `--signal`)
only records that a stop was asked for; the training loop acts on it at the next step boundary that all
ranks agree on (`distbench.engines.StopVote`), saves, and the process exits with EXIT_STOPPED. The same
command run again resumes from `latest`.

No process group here: the engine saves itself, and the caller passes the barrier.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from distbench.comm import StepTraffic
from distbench.config import ConfigError, RunConfig

EXIT_STOPPED = 75  # EX_TEMPFAIL (sysexits.h): stopped on request; the same command resumes it
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
LATEST = "latest"


@dataclass
class LoopState:
    """What the training loop must carry over a restart to end where an uninterrupted run would."""

    run_id: str
    started_at: str
    step: int = 0  # optimizer steps taken (warm-up and timed)
    timed_ms: list[float] = field(default_factory=list)  # step times of the timed window so far
    traffic: list[StepTraffic] = field(default_factory=list)  # the meter's record of those steps
    untimed_steps: int = 0  # timed-window steps left out: each resumed process's first (cold) step
    logged_bytes: int = 0  # the engine's comms logger over the timed window (DeepSpeed --validate-comm)
    logged_steps: int = 0
    loss: float = float("nan")  # this rank's last training loss
    resumed_from: list[int] = field(default_factory=list)  # the step of each resume, in order


class StopRequest:
    """While installed, SIGTERM and SIGUSR1 set `signal` (its name) instead of ending the process."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        # Slurm may deliver the same signal twice (to the job step and from the launcher): ask once.
        self.signal = self.signal or signal.Signals(signum).name

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


class Stopped(Exception):
    """The run stopped on a signal at a step boundary (every rank at the same one)."""

    def __init__(self, signal_name: str, step: int, total: int, checkpoint: Path | None) -> None:
        where = (
            f"saved to {checkpoint}; run the same command again to resume"
            if checkpoint
            else ("no --checkpoint-dir, so nothing to resume from")
        )
        super().__init__(f"stopped by {signal_name} after step {step} of {total}: {where}")
        self.signal, self.step, self.checkpoint = signal_name, step, checkpoint


# -------------------------------------------------------------------------------------------------- files
def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to `path`, whole or not at all (a temporary name, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_latest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The `latest` pointer of a checkpoint directory, or None when it holds no complete checkpoint."""
    path = Path(directory) / LATEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # Where results go may change between the first start and a resume; what is trained may not.
    return {section: values for section, values in config.items() if section != "output"}


def check_resumable(cfg: RunConfig, world_size: int | None) -> None:
    """Before any process starts: a checkpoint in --checkpoint-dir must be one of this very run."""
    latest = read_latest(cfg.output.checkpoint_dir) if cfg.output.checkpoint_dir else None
    if latest is None:
        return
    field_ = "output.checkpoint_dir"
    if world_size is not None and latest["world_size"] != world_size:
        raise ConfigError(
            field_, f"{cfg.output.checkpoint_dir} holds a checkpoint of {latest['world_size']} ranks, not {world_size}"
        )
    ours, theirs = _comparable(cfg.to_dict()), _comparable(latest["config"])
    if ours != theirs:
        differ = sorted(
            f"{s}.{k}" for s in ours for k in ours[s] if ours[s].get(k) != theirs.get(s, {}).get(k, object())
        )
        raise ConfigError(
            field_,
            f"{cfg.output.checkpoint_dir} holds a checkpoint of another configuration ({', '.join(differ)} "
            "differ); use another directory",
        )


# ---------------------------------------------------------------------------------------------- the store
def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpoints:
    """Saves and restores one run in `directory`. Every rank calls `save` and `load` alike."""

    def __init__(self, directory: str | os.PathLike, rank: int, world_size: int, device: torch.device,
                 config: dict[str, Any], barrier: Callable[[], None]) -> None:  # fmt: skip
        self.directory, self.rank, self.world_size = Path(directory), rank, world_size
        self.device, self.config, self.barrier = device, config, barrier

    def save(self, engine, state: LoopState, reason: str) -> Path:
        step_dir = self.directory / f"step-{state.step:08d}"
        step_dir.mkdir(parents=True, exist_ok=True)
        engine.save_checkpoint(step_dir)
        loop = {"state": asdict(state), "rng": _rng_state(self.device)}
        atomic_save(loop, step_dir / f"loop-rank{self.rank}.pt")
        self.barrier()  # every rank's files are in place
        if self.rank == 0:
            _fsync_dir(step_dir)
            _write_json(
                self.directory / LATEST,
                {
                    "step": state.step,
                    "dir": step_dir.name,
                    "reason": reason,
                    "world_size": self.world_size,
                    "run_id": state.run_id,
                    "config": self.config,
                },
            )
            for old in self.directory.glob("step-*"):
                if old != step_dir and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
        self.barrier()  # no rank exits (and has torchrun stop the others) before `latest` is written
        return step_dir

    def load(self, engine) -> LoopState | None:
        """Restore the latest checkpoint into `engine` and the RNGs; its loop state, or None if none."""
        latest = read_latest(self.directory)
        if latest is None:
            return None
        step_dir = self.directory / latest["dir"]
        engine.load_checkpoint(step_dir)
        loop = torch.load(step_dir / f"loop-rank{self.rank}.pt", weights_only=False)
        _set_rng_state(loop["rng"], self.device)
        saved = loop["state"]
        saved["traffic"] = [StepTraffic(**t) for t in saved["traffic"]]
        state = LoopState(**saved)
        state.resumed_from.append(state.step)
        return state
