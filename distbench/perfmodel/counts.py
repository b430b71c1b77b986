"""Parameter and byte counts per freeze rule / parameterisation, as a markdown table. Pure accounting:
models are built on the meta device, so nothing is allocated and nothing is trained.

    python -m distbench.perfmodel.counts --models resnet18 resnet50 wrn-28-10 --num-classes 1000
"""

from __future__ import annotations

import argparse
import logging

import torch

from distbench.comm.expected import step_traffic
from distbench.config import ConfigError, FreezeConfig, ModelConfig
from distbench.model import build_model
from distbench.model.counts import param_counts

COUNTS_MODELS = ("resnet18", "resnet50", "wrn-28-10")  # docs/structure.md's table
VARIANTS: list[tuple[str, dict, dict]] = [
    ("none", {}, {}),
    ("fraction:0.1", {}, {"freeze": "fraction:0.1"}),
    ("fraction:0.1 (mask)", {}, {"freeze": "fraction:0.1", "freeze_mode": "mask"}),
    ("fraction:0.1, dim in", {}, {"freeze": "fraction:0.1", "freeze_dim": "in"}),
    ("fraction:0.1, dim kh", {}, {"freeze": "fraction:0.1", "freeze_dim": "kh"}),
    ("fraction:0.1, dim kw", {}, {"freeze": "fraction:0.1", "freeze_dim": "kw"}),
    ("fraction:0.5", {}, {"freeze": "fraction:0.5"}),
    ("filters:5", {}, {"freeze": "filters:5"}),
    ("bn", {}, {"freeze": "bn"}),
    ("blocks:layer4", {}, {"freeze": "blocks:layer4"}),
    ("param channel-triangular", {"param": "channel-triangular"}, {}),
    ("param spatial-triangular", {"param": "spatial-triangular"}, {}),
    ("param channel-average", {"param": "channel-average"}, {}),
    ("param spatial-average", {"param": "spatial-average"}, {}),
    ("param spatial-channel-average", {"param": "spatial-channel-average"}, {}),
    ("param dirac", {"param": "dirac"}, {}),
    ("head fixed", {"head": "fixed"}, {}),
    ("head fixed + bn", {"head": "fixed"}, {"freeze": "bn"}),
]


def table(models: list[str], num_classes: int) -> str:
    rows = [
        "| model | variant | trainable params | conv learned fraction | bytes/step | vs none |",
        "|---|---|---:|---:|---:|---:|",
    ]
    logging.disable(logging.WARNING)  # the fixed heads' warning about shared rows: true, and beside the point
    try:
        return _rows(rows, models, num_classes)
    finally:
        logging.disable(logging.NOTSET)


def _rows(rows: list[str], models: list[str], num_classes: int) -> str:
    for name in models:
        base = None
        for label, model_kw, freeze_kw in VARIANTS:
            try:
                with torch.device("meta"):
                    model = build_model(
                        ModelConfig(model=name, num_classes=num_classes, **model_kw), FreezeConfig(**freeze_kw)
                    )
            except ConfigError as e:
                rows.append(f"| {name} | {label} | does not apply: {e} | | | |")
                continue
            counts = param_counts(model)
            sent = step_traffic(model, "ddp", 2, 1).payload_bytes  # DDP's all-reduce: the same at any n
            base = base or sent
            rows.append(
                f"| {name} | {label} | {counts['trainable']:,} | {counts['conv_learned_fraction']:.3f} | "
                f"{sent:,} | {sent / base:.3f} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(COUNTS_MODELS))
    p.add_argument("--num-classes", type=int, default=1000)
    args = p.parse_args(argv)
    print(table(args.models, args.num_classes))


if __name__ == "__main__":
    main()
