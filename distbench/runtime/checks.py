"""The one step that holds a RunConfig against the code: names against the registries, the head's options,
the data on disk, and whether the freeze rule and parameterisation fit the model (built on the meta device,
which allocates nothing). `launch/run.py` and the sweep call `check` before any process group exists, so
bad input fails first, in one line naming its flag. Every failure is a `ConfigError` with the dotted field.

`distbench.config` checks values alone and imports nothing of distbench; this module knows the components.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from distbench.config import ConfigError, RunConfig, UnknownName, parse_args
from distbench.model.contracts import positions


def known(field: str, lookup: Callable[[str], Any], name: str) -> None:
    try:
        lookup(name)
    except (UnknownName, ValueError) as e:  # ValueError: a family member that cannot be built (wrn-27-10)
        raise ConfigError(field, e.args[0] if isinstance(e, UnknownName) else str(e)) from None


# Config fields that are head options: (field, the builders' option, its value when not set).
HEAD_OPTION_FIELDS = (("head_scale", "fixed_scale", None), ("head_scale_init", "scale_init", "authors"),
                      ("head_rows", "row_norm", "authors"), ("head_bias", "bias", True))  # fmt: skip


def check(cfg: RunConfig, world_size: int | None = None) -> RunConfig:
    """Raise ConfigError for the first setting the code cannot honour; return `cfg` unchanged.
    `world_size`: the ranks that will run it, where known (a checkpoint to resume must be of as many)."""
    from distbench.comm.taps import COMM_HOOKS
    from distbench.model.backbones import check_model_name, is_language_model
    from distbench.model.backbones.gpt import DEFAULT_SEQ_LEN
    from distbench.model.heads import HEADS, ROW_NORMS, head_options, heads_taking
    from distbench.model.structure.freeze import parse_rule
    from distbench.model.structure.params import PARAMS
    from distbench.runtime.data import DATASETS, check_data
    from distbench.runtime.engines import ENGINES

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
    # Each head takes the options its builder declares: a setting for a head that does not take it is refused.
    for field, option, unset in HEAD_OPTION_FIELDS:
        if getattr(m, field) != unset and option not in head_options(m.head):
            raise ConfigError(
                f"model.{field}", f"applies only to the heads that take it: {', '.join(heads_taking(option))}"
            )
    if m.head == "sharded" and cfg.dist.backend != "ddp":
        raise ConfigError(
            "model.head", "sharded runs under --backend ddp (the DDP engine shards it and counts its collectives)"
        )
    check_language_model(cfg)
    check_data(cfg.data, m.num_classes, (m.seq_len or DEFAULT_SEQ_LEN) if is_language_model(m.model) else None)
    backbone = check_structure(cfg)
    if not cfg.output.dry_run:
        # as init_distributed decides: GPUs only where CUDA works (NVML may count GPUs a too-old driver cannot run)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        check_devices(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), gpus)
    check_resources(cfg, backbone, world_size)
    check_writable(cfg, world_size)
    return cfg


def check_language_model(cfg: RunConfig) -> None:
    """A language model reads token data and an image model images; the options of one are refused for the
    other, each naming its flag."""
    from distbench.model.backbones import is_language_model
    from distbench.runtime.data import TEXT_DATASETS

    m, lm = cfg.model, is_language_model(cfg.model.model)
    if lm and cfg.data.dataset not in TEXT_DATASETS:
        raise ConfigError("data.dataset", f"{m.model} reads token ids: use {' or '.join(TEXT_DATASETS)}")
    if not lm and cfg.data.dataset in TEXT_DATASETS:
        raise ConfigError("data.dataset", f"{cfg.data.dataset} is token data, for the language models (gpt-*)")
    if not lm and m.head == "tied":
        raise ConfigError("model.head", "tied reuses a language model's token embedding: use --model gpt-*")
    if not lm and m.seq_len is not None:
        raise ConfigError("model.seq_len", "applies only to the language models (gpt-*)")
    if lm and m.image_size is not None:
        raise ConfigError("model.image_size", f"applies only to image models; {m.model} reads token ids")
    if m.head == "tied" and cfg.freeze.frozen_init == "zero" and cfg.freeze.freeze in ("embedding", "bn"):
        raise ConfigError(
            "freeze.frozen_init", "zero would zero a tied head's output layer too: every logit 0, nothing to learn"
        )


def check_writable(cfg: RunConfig, world_size: int | None = None) -> None:
    """The results file and the checkpoint directory must be writable before training starts, not found
    unwritable after it (the run would be lost). Tried, not inferred from permission bits: root passes
    those, and a read-only file system or a file where a directory should be does not show in them."""
    if cfg.output.dry_run:
        return
    out = Path(cfg.output.out)
    _writable("output.out", out.parent, out)
    if cfg.output.checkpoint_dir is not None:
        from distbench.runtime.checkpoint import check_resumable

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


def check_structure(cfg: RunConfig) -> torch.nn.Module:
    """Freeze rules and parameterisations that do not fit the model fail here: the backbone is built on the
    meta device and the rule applied to it."""
    from distbench.model import backbone_for
    from distbench.model.backbones import takes_width, widths_taken
    from distbench.model.structure.freeze import FreezeSettings, apply_freeze
    from distbench.model.structure.params import apply_param

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
    if cfg.model.width is not None and not takes_width(cfg.model.model):
        raise ConfigError("model.width", f"applies only to: {', '.join(widths_taken())}")
    with torch.device("meta"):
        backbone = backbone_for(cfg.model)
        apply_param(cfg.model.param, backbone)
        apply_freeze(backbone, settings)
    return backbone


# What one step holds per rank besides the weights, in float32 words, where it can be known before running:
LOGIT_COPIES = 3  # the logits, the softmax cross-entropy keeps, their gradient
INPUT_COPIES = 2  # the batch and the rendered (or decoded) images it comes from
STEP_RECORD_BYTES = 600  # one timed step's time and traffic, kept in the loop state and every checkpoint
FIT = 0.9  # refuse only what cannot fit: the estimate leaves out activations, so it is a floor


def memory_floor(cfg: RunConfig, backbone: torch.nn.Module, world_size: int = 1) -> dict[str, int]:
    """A floor on the bytes one rank needs, by the field that drives each part: the model (weights,
    gradients, optimizer state; the head's C x N from `model.num_classes`), the batch (inputs and logits,
    from `train.batch_size`), and the per-step records (`train.steps`). Activations are left out; an engine
    that shards (FSDP, ZeRO) or a sharded head is taken to divide the whole model by the ranks."""
    n, c, b = backbone.num_features, cfg.model.num_classes, cfg.train.batch_size
    t = positions(backbone)  # predictions per sample: T for a language model
    shards = world_size if cfg.dist.backend in ("fsdp", "deepspeed") else 1
    head_shards = world_size if cfg.model.head == "sharded" else shards
    params = sum(p.numel() for p in backbone.parameters())
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    head = c if cfg.model.head == "tied" else c * n + c  # a tied head's weight is the backbone's embedding
    head_trainable = head if cfg.model.head in ("learned", "sharded") else c  # a fixed head learns its bias
    states = 2 if cfg.train.optimizer == "sgd" else 3  # gradient + momentum, or + both Adam moments
    return {
        "model.num_classes": 4 * (head + states * head_trainable) // head_shards,
        "model.model": 4 * (params + states * trainable) // shards,
        "train.batch_size": 4 * b * (INPUT_COPIES * math.prod(backbone.input_shape) + LOGIT_COPIES * t * c),
        "train.steps": STEP_RECORD_BYTES * (cfg.train.warmup_steps + cfg.train.steps),
    }


def available_memory(ranks_here: int) -> tuple[int, str] | None:
    """(bytes one rank may use, where from): the device's memory on CUDA, this host's available memory shared
    by its ranks otherwise; None where it cannot be read."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, "on the GPU"
    try:
        with open("/proc/meminfo") as fh:
            info = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in fh)}
        return info["MemAvailable"] // max(ranks_here, 1), f"per rank here ({ranks_here} on this host)"
    except (OSError, KeyError, ValueError):
        return None


def check_devices(ranks_here: int, gpus: int) -> None:
    """On CUDA each rank takes the GPU of its local rank (`init_distributed`): more ranks on a node than GPUs
    it can see would fail in start-up with CUDA's "invalid device ordinal", in a failed record naming no flag.
    `gpus` 0 (no CUDA): the ranks share the host's CPUs, as many as asked for."""
    if gpus and ranks_here > gpus:
        visible = f"{gpus} GPU{'s' if gpus > 1 else ''}"
        raise ConfigError(
            "launch.nproc_per_node",
            f"{ranks_here} ranks on this node, one GPU each, but it has {visible} (CUDA_VISIBLE_DEVICES included): "
            f"start at most {gpus}",
        )


def check_resources(cfg: RunConfig, backbone: torch.nn.Module, world_size: int | None = None) -> None:
    """Refuse, before anything is built for real, a run whose model, batch or step count cannot fit: it would
    otherwise spend minutes building, or be killed by the kernel, with nothing recorded."""
    if cfg.output.dry_run:
        return
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    have = available_memory(ranks_here)
    if have is None:
        return
    limit, where = have
    parts = memory_floor(cfg, backbone, world_size or 1)
    need = sum(parts.values())
    if need > FIT * limit:
        field, part = max(parts.items(), key=lambda kv: kv[1])
        section, name = field.split(".")
        value = getattr(getattr(cfg, section), name)
        raise ConfigError(
            field,
            f"{value:,} needs at least {need / 1e9:,.1f} GB per rank ({part / 1e9:,.1f} GB of it for this setting), "
            f"but {limit / 1e9:,.1f} GB are available {where}",
        )


def parse_and_check(
    argv: Sequence[str] | None = None, prog: str = "run.py", world_size: int | None = None
) -> RunConfig:
    """Command line (+ TOML) -> a RunConfig the code can run, or ConfigError."""
    return check(parse_args(argv, prog), world_size)
