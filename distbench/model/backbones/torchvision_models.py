"""Any torchvision classification model, with its classifier removed so that a distbench head can go on.

The classifier is the last nn.Linear in registration order (resnet `fc`, densenet `classifier`, vgg and
mobilenet `classifier[-1]`, vit `heads.head`, ...); N is its in_features.
"""

from __future__ import annotations

import functools

from torch import nn


@functools.cache
def names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build(name: str) -> nn.Module:
    import torchvision

    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"torchvision model {name!r} has no linear classifier to replace")
    *path, attr = linears[-1].split(".")
    parent = model.get_submodule(".".join(path)) if path else model
    linear = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())
    model.num_features = linear.in_features
    model.input_shape = (3, 299, 299) if name == "inception_v3" else (3, 224, 224)
    return model
