import pytest
import torch

from distbench.models import build_backbone, check_model_name
from distbench.registry import UnknownName


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
