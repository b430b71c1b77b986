"""The one step that holds a RunConfig against the code: names against the registries, the head's options,
the data on disk, and whether the freeze rule and parameterisation fit the model (built on the meta device,
which allocates nothing). `launch/run.py` and the sweep call `check` before any process group exists, so
bad input fails first, in one line naming its flag. Every failure is a `ConfigError` with the dotted field.

`distbench.config` checks values alone and imports nothing of distbench; this module knows the components.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from distbench.config import ConfigError, RunConfig, parse_args
from distbench.registry import UnknownName


def known(field: str, lookup: Callable[[str], Any], name: str) -> None:
    try:
        lookup(name)
    except (UnknownName, ValueError) as e:  # ValueError: a family member that cannot be built (wrn-27-10)
        raise ConfigError(field, e.args[0] if isinstance(e, UnknownName) else str(e)) from None


def check(cfg: RunConfig, world_size: int | None = None) -> RunConfig:
    """Raise ConfigError for the first setting the code cannot honour; return `cfg` unchanged.
    `world_size`: the ranks that will run it, where known (a checkpoint to resume must be of as many)."""
    from distbench.data import DATASETS, check_data
    from distbench.engines import ENGINES
    from distbench.engines.hooks import COMM_HOOKS
    from distbench.freeze import parse_rule
    from distbench.heads import HEADS, ROW_NORMS
    from distbench.models import check_model_name
    from distbench.params import PARAMS

    m = cfg.model
    known("model.model", check_model_name, m.model)
    known("model.head", HEADS.get, m.head)
    known("model.param", PARAMS.get, m.param)
    known("freeze.freeze", parse_rule, cfg.freeze.freeze)
    known("data.dataset", DATASETS.get, cfg.data.dataset)
    known("dist.backend", ENGINES.get, cfg.dist.backend)
    known("dist.comm_hook", COMM_HOOKS.get, cfg.dist.comm_hook)
    if m.head_rows not in ROW_NORMS:
        raise ConfigError("model.head_rows", f"unknown value {m.head_rows!r}; choose from: {', '.join(ROW_NORMS)}")
    if m.head == "sharded" and cfg.dist.backend != "ddp":
        raise ConfigError(
            "model.head", "sharded runs under --backend ddp (the DDP engine shards it and counts its collectives)"
        )
    check_data(cfg.data, m.num_classes)
    check_structure(cfg)
    check_writable(cfg, world_size)
    return cfg


def check_writable(cfg: RunConfig, world_size: int | None = None) -> None:
    """The results file and the checkpoint directory must be writable before training starts, not found
    unwritable after it (the run would be lost). Tried, not inferred from permission bits: root passes
    those, and a read-only file system or a file where a directory should be does not show in them."""
    if cfg.output.dry_run:
        return
    out = Path(cfg.output.out)
    _writable("output.out", out.parent, out)
    if cfg.output.checkpoint_dir is not None:
        from distbench.checkpoint import check_resumable

        _writable("output.checkpoint_dir", Path(cfg.output.checkpoint_dir))
        check_resumable(cfg, world_size)


def _writable(field: str, directory: Path, file: Path | None = None) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)  # what the run would do first anyway
        if file is not None and file.exists():
            os.close(os.open(file, os.O_WRONLY | os.O_APPEND))
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise ConfigError(field, f"cannot write {file or directory}: {e.strerror or e}") from None


def check_structure(cfg: RunConfig) -> None:
    """Freeze rules and parameterisations that do not fit the model fail here: the backbone is built on the
    meta device and the rule applied to it."""
    from distbench.freeze import FreezeSettings, apply_freeze
    from distbench.models import build_backbone
    from distbench.params import apply_param

    settings = FreezeSettings.from_config(cfg.freeze)
    if settings.rule.per_filter and cfg.model.param != "none":
        raise ConfigError(
            "freeze.freeze",
            f"{cfg.freeze.freeze!r} cannot split the filters of {cfg.model.param} "
            "convs; use --param none, or a bn / blocks rule",
        )
    if cfg.dist.backend == "fsdp" and cfg.freeze.freeze_mode == "mask" and settings.dim != "out":
        raise ConfigError(
            "freeze.freeze_dim", "--backend fsdp masks whole filters only (--freeze-dim out); use --freeze-mode split"
        )
    with torch.device("meta"):
        backbone = build_backbone(cfg.model.model, cfg.model.image_size)
        apply_param(cfg.model.param, backbone)
        apply_freeze(backbone, settings)


def parse_and_check(
    argv: Sequence[str] | None = None, prog: str = "run.py", world_size: int | None = None
) -> RunConfig:
    """Command line (+ TOML) -> a RunConfig the code can run, or ConfigError."""
    return check(parse_args(argv, prog), world_size)
