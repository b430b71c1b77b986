import pytest
import torch

from distbench.config import UnknownName
from distbench.model.backbones import build_backbone, check_model_name


@pytest.mark.parametrize(
    "name,features",
    [("tiny", 256), ("wrn-16-2", 128), ("resnet18", 512), ("densenet121", 1024), ("mobilenet_v3_small", 1024)],
)
def test_backbones_give_n_features(name, features):
    b = build_backbone(name, image_size=32 if name not in ("tiny", "wrn-16-2") else None)
    assert b.num_features == features
    assert b(torch.randn(2, *b.input_shape)).shape == (2, features)


def test_wrn_28_10_matches_the_paper():
    b = build_backbone("wrn-28-10")
    # Zagoruyko & Komodakis table: WRN-28-10 has 36.5M parameters on CIFAR-10 (with its 640 x 10 classifier)
    assert round((sum(p.numel() for p in b.parameters()) + 640 * 10 + 10) / 1e6, 1) == 36.5
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_backbone("wrn-27-10")


def test_torchvision_classifier_is_removed():
    b = build_backbone("resnet50")
    assert sum(p.numel() for p in b.parameters()) == 25_557_032 - (2048 * 1000 + 1000)


def test_unknown_model_lists_families_and_torchvision():
    with pytest.raises(UnknownName, match=r"unknown model 'resnet19'.*wrn-<depth>-<width>.*resnet18"):
        check_model_name("resnet19")


@pytest.mark.parametrize("name", ["tiny", "tiny-wide"])
@pytest.mark.parametrize("width", [8, 32, 128, 256])
def test_tiny_cnns_take_their_feature_width(name, width):
    backbone = build_backbone(name, width=width)
    assert backbone.num_features == width
    assert backbone(torch.zeros(2, 3, 16, 16)).shape == (2, width)


def test_tiny_wide_is_a_wider_body_at_the_same_width():
    narrow, wide = build_backbone("tiny", width=128), build_backbone("tiny-wide", width=128)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert wide.num_features == narrow.num_features and count(wide) > 2 * count(narrow)
    assert build_backbone("tiny").num_features == 256  # the default N, as before


def test_width_is_refused_where_the_model_has_none():
    from distbench.config import ConfigError
    from distbench.runtime.checks import parse_and_check

    with pytest.raises(ConfigError, match="applies only to: gpt-tiny, tiny, tiny-wide") as e:
        parse_and_check(["--model", "resnet18", "--width", "64"])
    assert e.value.field == "model.width"
