"""When a learning curve (a record's `accuracy.curve`) has flattened: the one rule that ends a run early
(--until-flat) and that the study tables (`results.analysis`) judge a finished run by."""

from __future__ import annotations

import math
from typing import Any


def doubling_start(curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last point at or before half the last point's samples per class: where a doubling starts."""
    last = curve[-1]
    half = [p for p in curve[:-1] if p["samples_per_class"] <= last["samples_per_class"] / 2]
    return half[-1] if half else None


def flat(curve: list[dict[str, Any]], tol: float, classes: int) -> bool:
    """Whether a learning curve has flattened (--until-flat): since the point at half its samples per class,
    top-1 moved by at most `tol` (a dip is no plateau) and the held-out loss fell by at most `tol` x ln C (the
    uniform guess's loss, so that one tolerance serves every class count). Judged over a doubling, not between
    neighbours, so that how often the run evaluates does not change where it stops; and on both, because a
    curve before its take-off can sit at chance top-1 while its loss falls. Three points at least: a record's
    curve should show its plateau, not one step onto it (a run at 100% from its first point ended at its second).
    A loss that rises while top-1 holds counts as flat: over-fitting, where more samples would not help."""
    if not curve or len(curve) < 3 or (half := doubling_start(curve)) is None:
        return False
    rose = curve[-1]["top1"] - half["top1"]
    return abs(rose) <= tol and loss_fell(curve) <= tol * math.log(classes)


def loss_fell(curve: list[dict[str, Any]]) -> float:
    """How far the held-out loss fell over the curve's last doubling of samples per class (nats; negative where
    it rose); NaN without a point at half the last one's or without their losses."""
    half = doubling_start(curve) if curve else None
    if half is None or half.get("eval_loss") is None or curve[-1].get("eval_loss") is None:
        return float("nan")
    return half["eval_loss"] - curve[-1]["eval_loss"]
