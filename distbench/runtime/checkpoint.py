"""Checkpoints: save a run at a step boundary, resume it exactly; what a checkpoint may contain.

Layout of `--checkpoint-dir DIR`:
    DIR/step-00000120/engine-rank{r}.pt   the engine's state (model, optimizer, loss scaler, comm-hook
                                          state; DeepSpeed: its own checkpoint files instead)
    DIR/step-00000120/loop-rank{r}.pt     the loop's state: steps taken, the timed window's step times and
                                          traffic so far, the last loss, RNG states
    DIR/latest                            JSON: which step directory is complete, for which config; once
                                          the run's record is written, where (`recorded`)
Every rank writes its own files (BatchNorm statistics and RNG states differ per rank), each by rename;
rank 0 writes `latest` (by rename) only after every rank has finished, so a reader finds the previous
complete checkpoint or the new complete one, never a half-written one. Older step directories are
removed after `latest` moves on.

A checkpoint is data, never code. Checkpoint directories live on shared file systems and a preempted Slurm
task resumes from them unattended, so nothing read back may execute: every file distbench wrote is loaded
with `torch.load(weights_only=True)` (tensors and plain containers; torch's default since 2.6), `latest`
may only name a `step-<8 digits>` directory inside DIR, and a file that does not load, or holds other than
what distbench writes, is a one-line `CheckpointError` (exit 2, nothing recorded, the checkpoint left as
it was). DeepSpeed's own `load_checkpoint` unpickles the files it wrote (see the README).

When to save and when to stop is the loop's (`distbench.runtime.loop`, `distbench.runtime.stop`). No process group here:
the engine saves itself, and the caller passes the barrier.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distbench.config import ConfigError, RunConfig, StorageError, defaults, trajectory
from distbench.runtime.stop import hold

if TYPE_CHECKING:
    import torch

    from distbench.comm.meter import StepTraffic

# torch is imported where it is used: reading `latest` (what a stop during start-up needs, from the stop
# watcher thread, while the main thread may still be importing torch) must not wait for it.

LATEST = "latest"
STEP_DIR = re.compile(r"step-\d{8}")  # what `latest` may name: a step directory right inside the checkpoint directory


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed from (not distbench's, truncated, tampered): one line naming the
    file, exit 2, nothing recorded, and the checkpoint left as it is."""

    def __init__(self, path: os.PathLike, problem: str) -> None:
        super().__init__("output.checkpoint_dir", f"{path}: {problem}")


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
    curve: list[dict[str, Any]] = field(default_factory=list)  # the learning curve's points so far
    ended_at: int | None = None  # the step the run ended at before its --steps: its curve was flat (--until-flat)
    continued_from: str | None = None  # the run of the same training, other --steps, whose checkpoint this went on from


# -------------------------------------------------------------------------------------------------- files
def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to `path`, whole or not at all (a temporary name, fsync, rename)."""
    import torch

    with _replacing(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    with _replacing(path) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary name to write `path` under, renamed to it once written. A write that fails (a full disk)
    removes it: left behind, it would hold the very space whose lack made the save fail."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# How torch.save reports a write that failed when it was given a path (DeepSpeed's saves): its C++ stream
# keeps no errno, only these words.
_WRITER_FAILURES = ("inline_container.cc", "iostream error", "PytorchStreamWriter failed")


def storage_reason(error: BaseException | None) -> str | None:
    """Why a write failed, if the storage made it fail: the OSError's reason anywhere in `error`'s chain
    (torch.save given a file reports a full disk as a RuntimeError raised while handling it), or torch's
    stream writer's words (given a path); None for an error that is not the storage's (a bug)."""
    seen, writer = set(), None
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            return error.strerror or str(error)
        if writer is None and any(words in str(error) for words in _WRITER_FAILURES):
            writer = " ".join(str(error).split())[:200]
        error = error.__cause__ or error.__context__
    return f"torch could not write it ({writer})" if writer else None


@contextlib.contextmanager
def _storing(what: str) -> Iterator[None]:
    """Turn a failed write (a full disk, a quota) into a StorageError that names `what` and the reason."""
    try:
        yield
    except Exception as e:
        reason = storage_reason(e)
        if reason is None:
            raise
        raise StorageError(f"cannot save {what}: {reason}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_latest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The `latest` pointer of a checkpoint directory, or None when it holds no complete checkpoint.
    A pointer that is not distbench's, or names anything but a step directory inside `directory`, raises
    CheckpointError: it would point the resume anywhere on the file system."""
    path = Path(directory) / LATEST
    if not path.is_file():
        return None
    try:
        latest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"not a distbench checkpoint (unreadable: {e})") from None
    kinds = {"step": int, "dir": str, "reason": str, "world_size": int, "run_id": str, "config": dict}
    bad = [k for k, t in kinds.items() if not isinstance(latest, dict) or not isinstance(latest.get(k), t)]
    if bad:
        raise CheckpointError(path, f"not a distbench checkpoint (no valid {bad[0]!r})")
    if not STEP_DIR.fullmatch(latest["dir"]) or latest["dir"] != f"step-{latest['step']:08d}":
        raise CheckpointError(path, f"not a distbench checkpoint (names {latest['dir']!r}, not a step directory)")
    return latest


def mark_recorded(directory: str | os.PathLike, out: str | os.PathLike) -> None:
    """Note in `latest` that the run's record is in `out`: the same command run again then does nothing."""
    latest = read_latest(directory)
    if latest is not None:
        _write_json(Path(directory) / LATEST, {**latest, "recorded": str(out)})


def mark_stopped(directory: str | os.PathLike, message: str) -> None:
    """Note in `latest` that the run stopped on a signal and this checkpoint is where it resumes: a sweep tells
    a preempted line (run it again) from a failed one by it, whatever the checkpoint was saved for."""
    latest = read_latest(directory)
    if latest is not None:
        _write_json(Path(directory) / LATEST, {**latest, "stopped": message})


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # Where results go, when the run stops for a flat curve and how many steps it is given may change between
    # the first start and a resume; what is trained may not. Nothing trained depends on --steps (the learning
    # rate is constant and the data is drawn by step), so a run given more steps is the shorter run continued,
    # and a checkpoint of one is the other's at that step. A learning-rate schedule over --steps would end
    # that: it would have to make steps part of what is compared here again.
    base = defaults()
    kept = {s: {**base.get(s, {}), **v} for s, v in trajectory(config).items() if s != "output"}
    kept["train"] = {k: v for k, v in kept.get("train", {}).items() if k != "steps"}
    return kept


def end_step(config: dict[str, Any]) -> int:
    """The step a run of `config` (as `RunConfig.to_dict` gives it) ends at: its warm-up and timed steps."""
    train = {**defaults()["train"], **config.get("train", {})}
    return train["warmup_steps"] + train["steps"]


def continues(latest: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether `latest` is a checkpoint of a run of another --steps that `config` may go on from: the same
    training, saved at a step `config` has not passed (a run can be continued, not shortened)."""
    return (
        not same_run(latest, config)
        and _comparable(latest["config"]) == _comparable(config)
        and latest["step"] <= end_step(config)
    )


def same_run(latest: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether `latest` is a checkpoint of this very run (its own --steps): its record, once written, is this one's."""
    return end_step(latest["config"]) == end_step(config)


def adopt(source: str | os.PathLike, latest: dict[str, Any], directory: str | os.PathLike) -> None:
    """Give `directory`, which holds no checkpoint, the checkpoint `latest` of `source`, as a run that goes on from
    it (`continues`) needs it: hard links where they can be made (a step directory's files are replaced by
    rename, never written again in place: `Checkpoints.save`), copies where not, and `latest` without the other
    run's record, stop or reason. Built beside `directory` and renamed into place, so a crash leaves no half of
    one, and a directory that gained a checkpoint meanwhile is left alone (OSError)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.adopt-{os.getpid()}")
    try:
        shutil.copytree(Path(source) / latest["dir"], tmp / latest["dir"], copy_function=link)
        kept = {k: v for k, v in latest.items() if k not in ("recorded", "stopped")}
        _write_json(tmp / LATEST, kept | {"reason": f"continues {latest['run_id']}"})
        os.rename(tmp, directory)  # onto nothing or an empty directory only
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_resumable(cfg: RunConfig, world_size: int | None) -> None:
    """Before any process starts: a checkpoint in --checkpoint-dir must be one of this very run, or of the same
    training given fewer or more steps and saved at a step this run has not passed (the run goes on from it),
    and every file of it that distbench reads back must be there and load as data."""
    latest = read_latest(cfg.output.checkpoint_dir) if cfg.output.checkpoint_dir else None
    if latest is None:
        return
    field_ = "output.checkpoint_dir"
    if world_size is not None and latest["world_size"] != world_size:
        raise ConfigError(
            field_, f"{cfg.output.checkpoint_dir} holds a checkpoint of {latest['world_size']} ranks, not {world_size}"
        )
    config = cfg.to_dict()
    ours, theirs = _comparable(config), _comparable(latest["config"])
    if ours != theirs:
        differ = sorted(
            f"{s}.{k}" for s in ours for k in ours[s] if ours[s].get(k) != theirs.get(s, {}).get(k, object())
        )
        raise ConfigError(
            field_,
            f"{cfg.output.checkpoint_dir} holds a checkpoint of another configuration ({', '.join(differ)} "
            "differ); use another directory",
        )
    if latest["step"] > (end := end_step(config)):
        raise ConfigError(
            "train.steps",
            f"{cfg.output.checkpoint_dir} holds a checkpoint at step {latest['step']:,}, past the {end:,} (warm-up "
            "and timed) that --steps gives: a run can be continued, not shortened",
        )
    if not same_run(latest, config) and cfg.output.run_id == latest["run_id"]:
        raise ConfigError(
            "output.run_id",
            f"{latest['run_id']} is the run whose checkpoint this one, given other --steps, goes on from; a run "
            "that continues another is a run of its own: give it another id, or none",
        )
    if latest.get("recorded") and same_run(latest, config):
        return  # complete: nothing will be loaded
    step_dir = Path(cfg.output.checkpoint_dir) / latest["dir"]
    for rank in range(latest["world_size"]):
        load_loop(step_dir / f"loop-rank{rank}.pt")
        engine = step_dir / f"engine-rank{rank}.pt"
        if engine.exists() or cfg.dist.backend != "deepspeed":
            _check_archive(engine)


def _check_archive(path: Path) -> None:
    """torch.save writes a zip archive whose directory is at its end: a truncated file has none. Cheap (the
    data itself is read, and checked, when the engine loads it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except FileNotFoundError:
        raise CheckpointError(path, "missing") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(path, f"cannot be read ({e}); truncated or not a checkpoint") from None


def load_tensors(path: Path, device: torch.device | str = "cpu") -> Any:
    """A file distbench saved, loaded as data only (tensors and plain containers): anything that would need to
    run code to unpickle is refused, as is a file that does not load."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch's advice on another pickle protocol is not the user's concern
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "missing") from None
    except pickle.UnpicklingError:
        problem = "holds more than tensors and plain values (loading it could run code): refused"
        raise CheckpointError(path, problem) from None
    except Exception as e:  # RuntimeError or EOFError for a truncated archive, and whatever else does not load
        reason = " ".join(str(e).split())[:200]
        problem = f"cannot be read ({type(e).__name__}: {reason}); truncated, or not a distbench checkpoint"
        raise CheckpointError(path, problem) from None


LOOP_KEYS = {"state", "rng"}


def load_loop(path: Path) -> dict[str, Any]:
    loop = load_tensors(path)
    if not isinstance(loop, dict) or set(loop) != LOOP_KEYS or not isinstance(loop["state"], dict):
        raise CheckpointError(path, "not a distbench loop state")
    return loop


# ---------------------------------------------------------------------------------------------- the store
def _rng_state(device: torch.device) -> dict[str, Any]:
    import torch

    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpoints:
    """Saves and restores one run in `directory`. Every rank calls `save` and `load` alike."""

    def __init__(self, directory: str | os.PathLike, rank: int, world_size: int, device: torch.device,
                 config: dict[str, Any], barrier: Callable[[], None]) -> None:  # fmt: skip
        self.directory, self.rank, self.world_size = Path(directory), rank, world_size
        self.device, self.config, self.barrier = device, config, barrier
        self.latest: dict[str, Any] | None = None  # the checkpoint `load` resumed from

    def save(self, engine, state: LoopState, reason: str) -> Path:
        step_dir = self.directory / f"step-{state.step:08d}"
        with _storing(f"the checkpoint of step {state.step} in {step_dir}"):
            step_dir.mkdir(parents=True, exist_ok=True)
            # At the step it resumed at (a stop before the first step, a run flat where it resumed) the engine
            # is as loaded, and its files may be hard links into another run's checkpoint (`adopt`), which an
            # engine that writes in place (DeepSpeed's torch.save to the path) would change under it: they
            # stay as they are.
            if not (self.latest and self.latest["dir"] == step_dir.name):
                engine.save_checkpoint(step_dir)
            loop = {"state": asdict(state), "rng": _rng_state(self.device)}
            atomic_save(loop, step_dir / f"loop-rank{self.rank}.pt")
        hold("save")
        self.barrier()  # every rank's files are in place
        if self.rank == 0:
            pointer = {
                "step": state.step,
                "dir": step_dir.name,
                "reason": reason,
                "world_size": self.world_size,
                "run_id": state.run_id,
                "config": self.config,
                # where the learning curve stands, for a look at a long line without loading its state
                "curve_end": state.curve[-1] if state.curve else None,
            }
            with _storing(f"{self.directory / LATEST} for the checkpoint of step {state.step}"):
                _fsync_dir(step_dir)
                _write_json(self.directory / LATEST, pointer)
            self._remove_steps_but(step_dir.name)
        self.barrier()  # no rank exits (and has torchrun stop the others) before `latest` is written
        return step_dir

    def _remove_steps_but(self, keep: str | None) -> None:
        for step_dir in self.directory.glob("step-*"):
            if step_dir.is_dir() and step_dir.name != keep:
                shutil.rmtree(step_dir, ignore_errors=True)

    def load(self, engine) -> LoopState | None:
        """Restore the latest checkpoint into `engine` and the RNGs; its loop state, or None if none."""
        latest = read_latest(self.directory)
        if self.rank == 0:
            # A save that failed (a full disk) or was cut short left a step directory `latest` does not name; no
            # rank writes before the first save, so it goes now, giving back its space before this run needs it.
            self._remove_steps_but(latest["dir"] if latest else None)
        if latest is None:
            return None
        step_dir = self.directory / latest["dir"]
        path = step_dir / f"loop-rank{self.rank}.pt"
        loop = load_loop(path)
        try:
            engine.load_checkpoint(step_dir)
        except CheckpointError:
            raise
        except Exception as e:  # a file that loads but does not fit (tampered, or of another model)
            raise CheckpointError(step_dir, f"does not fit this run ({' '.join(str(e).split())[:300]})") from None
        saved = dict(loop["state"])
        try:
            from distbench.comm.meter import StepTraffic

            saved["traffic"] = [StepTraffic(**t) for t in saved["traffic"]]
            state = LoopState(**saved)
        except (TypeError, KeyError) as e:
            raise CheckpointError(path, f"not a distbench loop state ({e})") from None
        _set_rng_state(loop["rng"], self.device)
        state.resumed_from.append(state.step)
        self.latest = latest
        return state
