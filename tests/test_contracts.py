"""Contract tests, parametrized over the registries (timm's habit): a new backbone, head, parameterisation,
freeze rule, comm hook, engine or dataset is held to its contract by being registered, with no test written
for it. Models are built small, or on the meta device where only shapes matter."""

from __future__ import annotations

import inspect

import pytest
import torch

from distbench.comm.expected import hook_bytes, step_traffic
from distbench.comm.taps import COMM_HOOKS
from distbench.config import DataConfig, FreezeConfig, ModelConfig
from distbench.model import build_model
from distbench.model.backbones import FAMILIES, build_backbone, is_language_model
from distbench.model.backbones.registry import BACKBONES
from distbench.model.contracts import (
    Backbone,
    HoldsFixedWeights,
    LanguageModel,
    ModelParallelHead,
    example_input,
    positions,
)
from distbench.model.counts import fixed_weights, param_counts, trainable
from distbench.model.heads import HEADS, build_head, head_options
from distbench.model.structure.freeze import RULES
from distbench.model.structure.params import PARAMS
from distbench.runtime.data import DATASETS, TEXT_DATASETS, Shard, build_dataset
from distbench.runtime.engines import ENGINES, Engine

N, C, B = 24, 50, 3


def head(name: str, **options) -> torch.nn.Module:
    """Head `name` at N -> C, with a token embedding at hand for the heads that reuse one (tied)."""
    return build_head(name, N, C, embedding=torch.nn.Embedding(C, N), **options)


# ----------------------------------------------------------------------------------------------- backbones
FAMILY_EXAMPLES = {"wrn-<depth>-<width>": "wrn-10-1", "diracnet-<depth>-<width>": "diracnet-10-1"}


@pytest.mark.parametrize("name", [*BACKBONES.names(), *(FAMILY_EXAMPLES[f.shown] for f in FAMILIES)])
def test_every_backbone_maps_its_input_shape_to_n_features(name):
    """Images (B, C, H, W) -> (B, N); a language model's token ids (B, T) -> (B x T, N), a row per position."""
    with torch.device("meta"):
        backbone = build_backbone(name, vocab_size=C)
        assert isinstance(backbone, Backbone)
        out = backbone(example_input(backbone, B))
    assert out.shape == (B * positions(backbone), backbone.num_features)
    assert isinstance(backbone, LanguageModel) == is_language_model(name)


def test_every_family_has_an_example():
    assert {f.shown for f in FAMILIES} == set(FAMILY_EXAMPLES)


# --------------------------------------------------------------------------------------------------- heads
@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_maps_features_to_logits_with_any_leading_dims(name):
    h = head(name)
    assert h(torch.randn(B, N)).shape == (B, C)
    assert h(torch.randn(2, B, N)).shape == (2, B, C)  # a sequence model's (B, T, N)


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_declares_its_fixed_weights(name):
    """A C x N matrix held as a buffer is a weight never trained: it must be named in `fixed_weights`, or DDP
    broadcasts it and counts miss it (a head that forgets is what this test is for)."""
    h = head(name)
    declared = {id(t) for t in fixed_weights(h)}
    for buf_name, buf in h.named_buffers():
        if buf.numel() >= C * N // 2:
            assert id(buf) in declared, f"{name}: buffer {buf_name} of {tuple(buf.shape)} is not in fixed_weights"
    counts = param_counts(h)
    assert counts["total"] == sum(p.numel() for p in h.parameters()) + sum(t.numel() for t in fixed_weights(h))
    if isinstance(h, HoldsFixedWeights) or name.startswith("fixed"):
        assert {n for n, p in h.named_parameters()} <= {"scale", "bias"}  # the fixed heads learn alpha and b


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_takes_exactly_the_options_it_declares(name):
    options = head_options(name)
    assert {"bias"} <= options  # every head can drop its bias
    assert all(
        p.kind is not inspect.Parameter.VAR_KEYWORD for p in inspect.signature(HEADS.get(name)).parameters.values()
    )
    h = head(name, bias=False, fixed_scale=2.0, row_norm="unit", scale_init="rule", seed=3)
    if "fixed_scale" in options:
        assert float(h.scale) == 2.0 and not isinstance(h.scale, torch.nn.Parameter)
    assert [n for n, _ in h.named_parameters() if n.endswith("bias")] == []  # bias=False honoured


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_sends_what_the_model_says(name):
    """comm.expected's DDP traffic for a model with this head: its trainable parameters, and a sharded head's
    collectives in place of its weight."""
    model = build_model(ModelConfig(model="gpt-tiny" if name == "tied" else "tiny", width=32, num_classes=C, head=name))
    traffic = step_traffic(model, "ddp", 4, B)
    if isinstance(model.head, ModelParallelHead):
        assert traffic.payload_bytes > sum(4 * p.numel() for p in trainable(model.backbone))
        assert {c.op for c in traffic.collectives} == {"all_reduce", "all_gather", "reduce_scatter"}
    else:
        assert traffic.payload_bytes == 4 * sum(p.numel() for p in trainable(model))


# ------------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("param", PARAMS.names())
def test_every_parameterisation_applies_or_refuses_in_one_line(param):
    from distbench.config import ConfigError

    for model in ("tiny", "wrn-10-1"):
        try:
            with torch.device("meta"):
                built = build_model(ModelConfig(model=model, num_classes=C, param=param, image_size=16))
        except ConfigError as e:
            assert e.field and "\n" not in str(e)
            continue
        assert param_counts(built)["trainable"] > 0


@pytest.mark.parametrize("kind", RULES.names())
def test_every_freeze_rule_learns_less_and_sends_exactly_that(kind):
    rule = {"fraction": "fraction:0.25", "filters": "filters:2", "blocks": "blocks:features"}.get(kind, kind)
    body = "gpt-tiny" if kind == "embedding" else "tiny"  # a rule for language models
    model = build_model(ModelConfig(model=body, width=32, num_classes=C), FreezeConfig(freeze=rule))
    full = build_model(ModelConfig(model=body, width=32, num_classes=C))
    learned = sum(p.numel() for p in trainable(model))
    assert learned <= sum(p.numel() for p in trainable(full))
    assert step_traffic(model, "ddp", 2, B).payload_bytes == 4 * learned


# --------------------------------------------------------------------------------------- comm and engines
@pytest.mark.parametrize("hook", COMM_HOOKS.names())
def test_every_comm_hook_has_what_it_sends(hook):
    model = build_model(ModelConfig(model="tiny", width=32, num_classes=C))
    sent = hook_bytes(model, hook, powersgd_rank=2)
    assert 0 < sent <= 4 * sum(p.numel() for p in trainable(model))


@pytest.mark.parametrize("engine", ENGINES.names())
def test_every_engine_is_an_engine_and_comm_expected_knows_it(engine):
    assert issubclass(ENGINES.get(engine), Engine)
    model = build_model(ModelConfig(model="tiny", width=32, num_classes=C))
    traffic = step_traffic(model, engine, 2, B)
    assert traffic.payload_bytes >= 4 * sum(p.numel() for p in trainable(model))


# --------------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_yields_batches_of_the_models_shape(name, tmp_path):
    from test_data import make_imagefolder

    classes = {"digits": 10, "fashion-mnist": 10, "imagefolder": 3}.get(name, C)
    fields = {"dataset": name, "eval_samples": 8, "workers": 0}
    if name == "imagefolder":
        fields["data_dir"] = str(make_imagefolder(tmp_path, classes=3, per_class=4))
    if name == "fashion-mnist":
        from distbench.runtime.data import FASHION_MNIST_DIR, FASHION_MNIST_FILES

        if not all((__import__("pathlib").Path(FASHION_MNIST_DIR) / f).is_file() for f in FASHION_MNIST_FILES.values()):
            pytest.skip("Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
    if name == "tokens":
        from test_lm import make_tokens

        fields["data_dir"] = str(make_tokens(tmp_path, classes, 400))
    shape, per_sample = ((16,), 16) if name in TEXT_DATASETS else ((3, 32, 32), 1)  # token data: T targets
    ds = build_dataset(DataConfig(**fields), classes, shape, 4, Shard(0, 1, torch.device("cpu")), 0)
    x, y = next(ds.train())
    assert x.shape == (4, *shape) and y.shape == (4 * per_sample,)
    assert 0 <= int(y.min()) and int(y.max()) < classes
    held_out = sum(len(y) for _, y in ds.eval())
    assert 0 < held_out <= max(ds.eval_size, 8 * per_sample)
