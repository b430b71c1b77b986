"""One typed, frozen run configuration: TOML file (`--config`) overlaid by command-line flags.

Each field is documented where it is declared; its flag is `--` + the field name with dashes, and its
TOML key is `[section] field`. A bad value raises ConfigError naming both.

This module is a leaf: it imports nothing of distbench, so anything may import it. It checks values
(ranges, choices written here); whether names exist in the registries and whether the freeze rule and
parameterisation fit the model is `distbench.runtime.checks.check`, the one explicit step that run.py and the
sweep take before any process group exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
import time
import tomllib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar


def flag(name: str, negated: bool = False) -> str:
    """The command-line flag of config field `name`: head_bias -> --head-bias (or --no-head-bias)."""
    return ("--no-" if negated else "--") + name.replace("_", "-")


class ConfigError(ValueError):
    """A bad configuration value. `field` is the dotted config path, e.g. 'train.steps'."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    @property
    def flag(self) -> str:
        return flag(self.field.rsplit(".", 1)[-1])

    def __str__(self) -> str:
        return f"{self.flag} ({self.field}): {self.args[0]}"


class DataError(RuntimeError):
    """Bad data met while running (an unreadable image): one line naming the file, never a traceback."""


class StorageError(RuntimeError):
    """A file the run writes could not be written (a full disk, a quota, a file-size limit): one line naming
    it, never a traceback, and what was written before stays as it was."""


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field: its default and its help. `added=True` marks a field added after sweeps had run: at its
    default it is left out of a sweep line's id (`distbench.sweep.run_id_for`), so a new option does not
    rename every line that ran before it. `reads=True` marks a field that says where on a run's trajectory its
    record is read, not what is trained: it is no part of a run's identity (`trajectory`)."""
    return field(default=default, metadata={"help": help, **kw})


def defaults() -> dict[str, dict[str, Any]]:
    """Every field's default, {section: {field: default}}: the one place readers of configs (sweep ids,
    analysis labels) take them from."""
    return RunConfig().to_dict()


def _without(
    config: dict[str, dict[str, Any]], drop: Callable[[dataclasses.Field, Any], bool]
) -> dict[str, dict[str, Any]]:
    """`config` (as `RunConfig.to_dict` gives it) less the known fields for which `drop(field, value)` holds."""
    out = {}
    for section, values in config.items():
        cls = SECTIONS.get(section)
        fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
        out[section] = {k: v for k, v in values.items() if not (k in fields and drop(fields[k], v))}
    return out


def added_at_default(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`config` without the `added` fields that hold their default."""
    return _without(config, lambda f, v: bool(f.metadata.get("added")) and v == f.default)


def trajectory(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`config` without the fields marked `reads` (when to stop reading a run, not what it trains): what a
    sweep line's id and a resume's check compare, so that a line may take a stop rule while it runs."""
    return _without(config, lambda f, v: bool(f.metadata.get("reads")))


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(field, message)


@dataclass(frozen=True)
class ModelConfig:
    model: str = opt(
        "tiny",
        "backbone: tiny, tiny-wide, wrn-<depth>-<width>, diracnet-<depth>-<width>, any torchvision classification "
        "model, or a language model: gpt-tiny, gpt2-small, gpt2-medium, gpt2-large, gpt2-xl (C is then the "
        "vocabulary size V)",
    )
    num_classes: int = opt(100, "classes C; the head maps the backbone's N features to C logits")
    head: str = opt(
        "learned",
        "classifier head: learned, sharded (learned, split by classes over the ranks), fixed (Hadamard), "
        "fixed-fwht, fixed-orthogonal, fixed-srht; tied (language models: the token embedding, as GPT-2)",
    )
    head_bias: bool = opt(True, "learn a bias in the head (--no-head-bias drops it)")
    head_scale: float | str | None = opt(
        None,
        "fixed heads: hold alpha at this value (the authors' fixed_scale), or at `rule` (the cosine-softmax scale "
        "sqrt(2) ln(C - 1) over the head's row norm); default: learned",
        parse="scale",
    )
    head_scale_init: str = opt(
        "authors",
        "fixed heads: where a learned alpha starts: authors (their code's start) or rule (the cosine-softmax "
        "scale sqrt(2) ln(C - 1) over the head's row norm)",
        added=True,
    )
    head_rows: str = opt("authors", "fixed-orthogonal rows: authors (as nn.init.orthogonal leaves them) or unit")
    width: int | None = opt(
        None,
        "feature width N of the tiny CNNs (tiny, tiny-wide; their hidden stages scale with it; default 256) and of "
        "gpt-tiny (default 64)",
        added=True,
    )
    seq_len: int | None = opt(None, "context length T of the language models (gpt-*); default 256", added=True)
    image_size: int | None = opt(None, "input height = width; default: the model's own (32 or 224)")
    param: str = opt(
        "none",
        "conv parameterisation: none, channel-triangular (alias symmetric; square convs), spatial-triangular "
        "(square kernels), channel-average, spatial-average, spatial-channel-average, dirac",
    )

    def __post_init__(self) -> None:
        _check(
            self.head_scale is None
            or self.head_scale == "rule"
            or (math.isfinite(self.head_scale) and self.head_scale != 0),
            "model.head_scale",
            f"must be a finite non-zero number or rule, got {self.head_scale}",
        )
        _check(
            self.head_scale_init in ("authors", "rule"),
            "model.head_scale_init",
            f"unknown value {self.head_scale_init!r}; choose from: authors, rule",
        )
        _check(
            self.head_scale_init == "authors" or self.head_scale is None,
            "model.head_scale_init",
            "a held alpha (--head-scale) does not start anywhere: give one of the two",
        )
        _check(self.width is None or self.width >= 8, "model.width", f"must be >= 8, got {self.width}")
        _check(self.num_classes >= 2, "model.num_classes", f"must be >= 2, got {self.num_classes}")
        _check(self.seq_len is None or self.seq_len >= 1, "model.seq_len", f"must be >= 1, got {self.seq_len}")
        _check(
            self.image_size is None or self.image_size >= 8, "model.image_size", f"must be >= 8, got {self.image_size}"
        )


@dataclass(frozen=True)
class FreezeConfig:
    freeze: str = opt("none", "what the backbone learns: none, fraction:P, filters:K, bn, blocks:a,b,..., embedding")
    freeze_mode: str = opt("split", "split (fixed filters are buffers: bytes drop) or mask (gradient zeroed)")
    bn: str = opt("learned", "BatchNorm affine parameters of partly frozen convs: learned or frozen")
    frozen_init: str = opt("random", "fixed weights keep their random init, or are zeroed: random or zero")
    freeze_dim: str = opt(
        "out",
        "the conv weight dimension fraction:P and filters:K slice: out (whole filters), in (input channels), "
        "kh (kernel rows) or kw (kernel columns)",
    )

    def __post_init__(self) -> None:
        for name, valid in (
            ("freeze_dim", ("in", "kh", "kw", "out")),
            ("freeze_mode", ("mask", "split")),
            ("bn", ("frozen", "learned")),
            ("frozen_init", ("random", "zero")),
        ):
            value = getattr(self, name)
            _check(value in valid, f"freeze.{name}", f"unknown value {value!r}; choose from: {', '.join(valid)}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = opt(
        "synthetic",
        "data: synthetic, digits, fashion-mnist, imagefolder; for the language models synthetic-text or tokens",
    )
    data_dir: str | None = opt(
        None, "imagefolder root (train/ and val/ class folders); fashion-mnist idx files; tokens: train.bin, val.bin"
    )
    eval_samples: int = opt(2048, "held-out samples evaluated after training, all ranks together (0: all)")
    noise: float = opt(0.5, "synthetic task difficulty: code noise relative to the spread of class codes")
    code_dim: int = opt(64, "synthetic task: dimension d of the class codes (1 to 192)")
    successors: int = opt(
        16, "synthetic-text: how many tokens may follow each token (Zipf-weighted; at most V)", added=True
    )
    zipf: float = opt(1.0, "synthetic-text: the Zipf exponent s of the successors' probabilities", added=True)
    workers: int = opt(4, "data-loader worker processes per rank (imagefolder)")
    skip_bad_images: bool = opt(
        False, "imagefolder: skip unreadable images (counted in the record) instead of failing on the first", added=True
    )

    def __post_init__(self) -> None:
        _check(self.eval_samples >= 0, "data.eval_samples", f"must be >= 0, got {self.eval_samples}")
        _check(self.successors >= 1, "data.successors", f"must be >= 1, got {self.successors}")
        _check(self.zipf >= 0 and math.isfinite(self.zipf), "data.zipf", f"must be >= 0, got {self.zipf}")
        _check(
            self.dataset not in ("synthetic", "synthetic-text") or self.eval_samples > 0,
            "data.eval_samples",
            "synthetic data has no natural end: give a positive count",
        )
        _check(self.noise >= 0, "data.noise", f"must be >= 0, got {self.noise}")
        # d <= 3 x 8 x 8: the code -> image map stays injective, so the nearest code stays the Bayes oracle.
        _check(1 <= self.code_dim <= 192, "data.code_dim", f"must be in 1..192, got {self.code_dim}")
        _check(self.workers >= 0, "data.workers", f"must be >= 0, got {self.workers}")
        if self.dataset == "imagefolder":
            _check(bool(self.data_dir), "data.data_dir", "imagefolder needs --data-dir")
            _check(Path(self.data_dir).is_dir(), "data.data_dir", f"no such directory: {self.data_dir}")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = opt("sgd", "sgd (with momentum) or adamw")
    lr: float = opt(0.05, "learning rate (constant)")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(0.0, "weight decay")
    batch_size: int = opt(32, "samples per rank per step")
    steps: int = opt(
        200,
        "timed training steps (after warm-up); more than a finished run's, with its --checkpoint-dir: goes on from "
        "that run's checkpoint",
    )
    warmup_steps: int = opt(10, "untimed steps first; covers DDP's bucket rebuild after iteration 0")
    nosync_steps: int = opt(20, "steps timed again with gradient sync off, for exposed communication (0: skip)")
    eval_every: float = opt(
        0.0,
        "also evaluate every this many samples per class seen (language models: target tokens per vocabulary "
        "entry), for the record's learning curve (0: at the end only)",
        added=True,
    )
    until_flat: float = opt(
        0.0,
        "stop before --steps once the learning curve is flat: the last doubling of the samples per class seen "
        "moved top-1 by at most this (a fraction) and lowered the held-out loss by at most this x ln C, the "
        "uniform guess's loss; not before the third curve point (needs --eval-every; 0: run every step)",
        added=True,
        reads=True,
    )
    precision: str = opt("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16")
    seed: int = opt(0, "seed for weights, fixed heads and data")

    def __post_init__(self) -> None:
        _check(
            self.optimizer in ("sgd", "adamw"),
            "train.optimizer",
            f"unknown optimizer {self.optimizer!r}; choose from: adamw, sgd",
        )
        _check(
            self.precision in ("auto", "fp32", "bf16", "fp16"),
            "train.precision",
            f"unknown precision {self.precision!r}; choose from: auto, bf16, fp16, fp32",
        )
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(self.batch_size > 0, "train.batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.steps > 0, "train.steps", f"must be > 0, got {self.steps}")
        _check(
            self.warmup_steps >= 1,
            "train.warmup_steps",
            f"must be >= 1 (iteration 0 is never timed: DDP rebuilds its buckets after it), got {self.warmup_steps}",
        )
        _check(self.nosync_steps >= 0, "train.nosync_steps", f"must be >= 0, got {self.nosync_steps}")
        _check(
            math.isfinite(self.eval_every) and self.eval_every >= 0,
            "train.eval_every",
            f"must be >= 0, got {self.eval_every}",
        )
        _check(
            math.isfinite(self.until_flat) and 0 <= self.until_flat < 1,
            "train.until_flat",
            f"must be a fraction in [0, 1), got {self.until_flat}",
        )
        _check(
            not self.until_flat or self.eval_every > 0,
            "train.until_flat",
            "needs a learning curve to judge: set --eval-every too",
        )


@dataclass(frozen=True)
class DistConfig:
    backend: str = opt("ddp", "data-parallel engine: ddp, fsdp (torch's FSDP2) or deepspeed")
    zero_stage: int = opt(0, "DeepSpeed ZeRO stage: 0, 1, 2 or 3")
    deepspeed_config: str | None = opt(None, "JSON file overlaid on the DeepSpeed config distbench generates")
    validate_comm: bool = opt(False, "DeepSpeed: also run its comms logger and check its bytes against the meter")
    dist_backend: str = opt("auto", "process-group backend: auto (nccl on CUDA, else gloo), nccl, gloo")
    comm_hook: str = opt("allreduce", "DDP comm hook (torch's own): allreduce, fp16, bf16, powersgd")
    powersgd_rank: int = opt(1, "PowerSGD matrix approximation rank")
    powersgd_start_iter: int = opt(2, "PowerSGD compresses from this iteration on (plain all-reduce before)")
    bucket_cap_mb: float = opt(25.0, "DDP gradient bucket size in MiB")
    # gloo waits 30 minutes by default, NCCL 10: a hung rank would hold the job (and its GPUs) that long.
    # Five minutes is far above any legitimate wait in a run (one step, one rank's share of evaluation,
    # writing a checkpoint) and far below those defaults.
    pg_timeout_s: float = opt(300.0, "seconds a rank waits for its peers in a collective before the run fails")

    def __post_init__(self) -> None:
        _check(
            self.dist_backend in ("auto", "nccl", "gloo"),
            "dist.dist_backend",
            f"unknown process-group backend {self.dist_backend!r}; choose from: auto, gloo, nccl",
        )
        _check(self.bucket_cap_mb > 0, "dist.bucket_cap_mb", f"must be > 0, got {self.bucket_cap_mb}")
        _check(self.pg_timeout_s > 0, "dist.pg_timeout_s", f"must be > 0, got {self.pg_timeout_s}")
        _check(self.zero_stage in (0, 1, 2, 3), "dist.zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        _check(self.powersgd_rank >= 1, "dist.powersgd_rank", f"must be >= 1, got {self.powersgd_rank}")
        _check(
            self.powersgd_start_iter >= 2,
            "dist.powersgd_start_iter",
            f"must be >= 2 (torch's PowerSGD with error feedback starts after two iterations), got "
            f"{self.powersgd_start_iter}",
        )
        for name in ("zero_stage", "deepspeed_config", "validate_comm"):
            default = DistConfig.__dataclass_fields__[name].default
            _check(
                self.backend == "deepspeed" or getattr(self, name) == default,
                f"dist.{name}",
                "applies only with --backend deepspeed",
            )
        reducer = {"deepspeed": "DeepSpeed reduces", "fsdp": "FSDP reduce-scatters"}.get(self.backend)
        _check(
            reducer is None or self.comm_hook == "allreduce",
            "dist.comm_hook",
            f"{reducer} gradients itself; comm hooks apply only with --backend ddp",
        )
        if self.deepspeed_config:
            try:
                with open(self.deepspeed_config) as fh:
                    ok = isinstance(json.load(fh), dict)
            except OSError as e:
                message = f"cannot read {self.deepspeed_config}: {e.strerror}"
                raise ConfigError("dist.deepspeed_config", message) from None
            except json.JSONDecodeError as e:
                raise ConfigError("dist.deepspeed_config", f"{self.deepspeed_config} is not JSON: {e}") from None
            _check(ok, "dist.deepspeed_config", "must hold a JSON object")


@dataclass(frozen=True)
class OutputConfig:
    out: str = opt("results/runs.jsonl", "results file; one JSON record is appended per run")
    run_id: str | None = opt(None, "record id; default: the start time and 8 random hex digits (a sweep line: its own)")
    dry_run: bool = opt(False, "build the model, print parameter and expected byte counts, train nothing")
    checkpoint_dir: str | None = opt(
        None, "save here at the end, every --checkpoint-every steps and on SIGTERM/SIGUSR1; resume from it"
    )
    checkpoint_every: int = opt(0, "also save every N optimizer steps (0: only at the end and on a signal)")
    profile_dir: str | None = opt(
        None,
        "write a torch.profiler trace of --profile-steps extra steps per rank here (DIR/rank-<r>.json.gz, for "
        "Perfetto and HTA), after the timed window, which profiling never touches",
        added=True,
    )
    profile_steps: int = opt(3, "steps traced with --profile-dir (after one of warm-up)", added=True)

    def __post_init__(self) -> None:
        _check(bool(self.out), "output.out", "must be a file path")
        _check(self.profile_steps >= 1, "output.profile_steps", f"must be >= 1, got {self.profile_steps}")
        _check(self.checkpoint_every >= 0, "output.checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        _check(
            self.checkpoint_dir is not None or self.checkpoint_every == 0,
            "output.checkpoint_every",
            "needs --checkpoint-dir",
        )
        _check(not Path(self.out).is_dir(), "output.out", f"{self.out} is a directory; give a .jsonl file")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        if self.dist.comm_hook == "powersgd" and self.dist.powersgd_start_iter > self.train.warmup_steps:
            raise ConfigError(
                "dist.powersgd_start_iter",
                f"{self.dist.powersgd_start_iter} > --warmup-steps "
                f"{self.train.warmup_steps}: every timed step must be a compressed one",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = typing.get_type_hints(RunConfig)


def _fields():
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield section, f, hints[f.name]


def _scale(value: Any) -> float | str:
    """A fixed alpha: a number, or `rule`."""
    if value == "rule":
        return "rule"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a number or rule, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"must be a number or rule, got {value!r}") from None


PARSERS = {"scale": _scale}  # fields whose values are not of one plain type (their metadata's `parse`)


def _flag_type(parse):
    """`parse` for argparse: its ValueError as argparse's one-line error."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(prog: str = "run.py") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="distbench: train one configuration under data parallelism and append one distbench.run/1 record.",
        argument_default=argparse.SUPPRESS,
    )
    # The deepspeed launcher appends --local_rank=N; the rank comes from the environment instead.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS, dest="local_rank")
    tables = " ".join(f"[{name}]" for name in SECTIONS)
    p.add_argument("--config", help=f"TOML file with {tables} tables; flags win")
    for section, f, hint in _fields():
        help_ = f"{f.metadata['help']} (default: {f.default})"
        if hint is bool:  # --name and --no-name
            p.add_argument(flag(f.name), dest=f"{section}.{f.name}", action=argparse.BooleanOptionalAction, help=help_)
            continue
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        kind = _flag_type(PARSERS[f.metadata["parse"]]) if "parse" in f.metadata else base
        p.add_argument(flag(f.name), dest=f"{section}.{f.name}", type=kind, help=help_, metavar=f.name.upper())
    return p


def _load_toml(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None
    for section, table in doc.items():
        if section not in SECTIONS or not isinstance(table, dict):
            hint = _did_you_mean(section, SECTIONS, "[{}]")
            raise ConfigError(
                "config",
                f"{path}: unknown table [{section}]{hint}; choose from: {', '.join(f'[{s}]' for s in SECTIONS)}",
            )
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for key in table:
            if key not in known:
                takes = ", ".join(sorted(known))
                hint = _did_you_mean(key, known, "{}")
                raise ConfigError(f"{section}.{key}", f"unknown key in {path}{hint}; [{section}] takes: {takes}")
    return doc


def _did_you_mean(name: str, choices, form: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {form.format(close[0])}?)" if close else ""


def from_dict(values: dict[str, dict[str, Any]]) -> RunConfig:
    """Build and validate a RunConfig from {section: {field: value}} (missing fields take defaults)."""
    sections = {}
    for section, cls in SECTIONS.items():
        table = dict(values.get(section, {}))
        hints = typing.get_type_hints(cls)
        parsers = {f.name: PARSERS[f.metadata["parse"]] for f in dataclasses.fields(cls) if "parse" in f.metadata}
        for key, value in table.items():
            if key in parsers:
                if value is not None:
                    try:
                        table[key] = parsers[key](value)
                    except ValueError as e:
                        raise ConfigError(f"{section}.{key}", str(e)) from None
                continue
            hint = hints.get(key)
            base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
            if base is float and isinstance(value, int) and not isinstance(value, bool):
                table[key] = float(value)
            elif value is not None and base in (int, float, str, bool) and type(value) is not base:
                raise ConfigError(f"{section}.{key}", f"must be {base.__name__}, got {value!r}")
        sections[section] = cls(**table)
    return RunConfig(**sections)


def parse_args(argv: Sequence[str] | None = None, prog: str = "run.py") -> RunConfig:
    """Command line (+ optional TOML) -> validated RunConfig. Raises ConfigError on bad values;
    argparse itself exits 2 with one line on malformed flags."""
    ns = vars(build_parser(prog).parse_args(argv))
    ns.pop("local_rank", None)
    values: dict[str, dict[str, Any]] = _load_toml(ns.pop("config")) if "config" in ns else {}
    for dotted, value in ns.items():
        section, name = dotted.split(".")
        values.setdefault(section, {})[name] = value
    return from_dict(values)


def fail(error: Exception, prog: str = "run.py", quiet: bool = False, grace_s: float = 20.0) -> int:
    """Report a configuration error in one line and return exit status 2.

    Every rank finds the same error; one (rank 0) reports it and the others stay `quiet`. The quiet ones
    wait `grace_s` before exiting: torchrun stops all workers as soon as the first one exits, and would
    otherwise often kill rank 0 before it had printed. Once rank 0 exits, torchrun ends the wait.
    """
    if quiet:
        time.sleep(grace_s)
    else:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
    return 2


def reader_gone() -> int:
    """stdout's reader has gone (`run.py --dry-run | head`, `distbench counts | head`): no traceback for it to
    miss. stdout now points at /dev/null, else the flush at exit raises again; exit status 1, as the Python
    docs' recipe for SIGPIPE has it."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def markdown() -> str:
    """docs/cli.md: every flag from the config dataclasses (a test fails when the committed file is stale)."""
    lines = [
        "# Command line and config files",
        "",
        "<!-- generated by `distbench docs` from distbench/config.py; do not edit -->",
        "",
        "`launch/run.py` (under torchrun) and `distbench run` take these flags. Each is also a key of a TOML file",
        f"given with `--config FILE`, in its table ({', '.join(f'`[{name}]`' for name in SECTIONS)}); flags win",
        "over the file. A boolean flag `--x` has its `--no-x`. A bad value is one line naming the flag, exit 2.",
        "",
    ]
    for section, cls in SECTIONS.items():
        lines += [f"## [{section}]", "", "| flag | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = "none" if f.default is None else f"`{f.default}`"
            lines.append(f"| `{flag(f.name)}` | {default} | {f.metadata['help']} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- registries
# Name -> builder registries with helpful misses (after timm's register_model/create_model): every name a
# config holds (model, head, dataset, engine, hook, rule) resolves through one, so a miss lists the choices.
T = TypeVar("T", bound=Callable)


class UnknownName(KeyError):
    """A name that is not in a registry; its message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            return fn

        return add

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(self.miss_message(name, self.names())) from None

    def miss_message(self, name: str, valid: list[str]) -> str:
        hint = difflib.get_close_matches(name, valid, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown {self.kind} {name!r}{did_you_mean}; choose from: {', '.join(valid)}"
