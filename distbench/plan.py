"""What a head's saving buys on a GPU cluster, before training anything.

    python -m distbench.plan --model resnet50 --num-classes 100000 --heads learned,fixed \\
        --gpus 8,64,1024 --cluster h100-ib-ndr

For each head the model is built on the meta device (no memory, no training): its gradient bytes per step
(`comm.expected_bytes`) and its FLOPs per sample for forward and backward (torch's FlopCounterMode). The
step is then predicted on `--gpus` GPUs of the interconnect preset (`distbench.nccl`):

    compute   = FLOPs x batch / (peak x MFU)                  (the device preset; an assumption, printed)
    all-reduce = DDP's buckets of --bucket-cap-mb, each by NCCL's ring or tree (`nccl.collective_time`)
    exposed   = max(all-reduce - backward, last bucket)       (buckets overlap the backward pass, the last
                                                               cannot: it is ready only when backward ends)
    step      = compute + exposed

The sharded head's collectives (features and labels gathered, the feature gradient reduce-scattered) sit
in the forward and backward passes and are counted as exposed. No process group: nothing here runs one.
Not built yet (issue 16): records as input (`--records`, measured compute and overlap), the `measured`
preset fitted to this machine, and the figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from distbench import nccl
from distbench.comm import expected_bytes
from distbench.config import ModelConfig
from distbench.sharded import expected_collective_bytes


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float  # dense bf16 tensor-core FLOP/s
    source: str


# Datasheet peaks; what a training step reaches of them (MFU) is the assumption that dominates the error.
DEVICES = {
    # NVIDIA A100 datasheet: 312 TFLOPS BF16 tensor core, dense
    "a100": Device("a100", 312e12, "https://www.nvidia.com/en-us/data-center/a100/"),
    # NVIDIA H100 SXM datasheet: 989 TFLOPS BF16 tensor core, dense (1979 with sparsity)
    "h100": Device("h100", 989e12, "https://www.nvidia.com/en-us/data-center/h100/"),
}
CLUSTER_DEVICE = {"a100-ib-hdr": "a100", "h100-ib-ndr": "h100", "roce-100g": "a100"}
# Convolutional networks reach a small part of tensor-core peak: ResNet-50 trains at a few thousand images
# per second on one H100, about a tenth of its bf16 peak at 24 GFLOP per image. An assumption, not a
# measurement: a real step can differ by a factor of 2 either way (--mfu sets it; records will replace it).
MFU = 0.1


@dataclass(frozen=True)
class HeadCost:
    head: str
    gradient_bytes: int  # reduced by the data-parallel all-reduce per step
    flops_per_sample: float  # forward + backward
    # the sharded head's own collectives per rank and step, by op (the input of each call); {} for others
    head_collectives: dict[str, int] = field(default_factory=dict)

    @property
    def head_collective_bytes(self) -> int:
        return sum(self.head_collectives.values())


@functools.cache
def _measure(model: str, num_classes: int, head: str) -> tuple[int, int, int, float]:
    """(gradient bytes, the backbone's alone, feature width N, FLOPs per sample for forward + backward) of
    a model built on the meta device: no memory, no weights."""
    from distbench.models import build_model

    logging.disable(logging.WARNING)  # the fixed heads' warning about shared rows, once per build
    try:
        with torch.device("meta"):
            net = build_model(ModelConfig(model=model, num_classes=num_classes, head=head))
            x = torch.empty(1, *net.input_shape)
            with FlopCounterMode(display=False) as counter:
                F.cross_entropy(net(x), torch.zeros(1, dtype=torch.long)).backward()
    finally:
        logging.disable(logging.NOTSET)
    return expected_bytes(net), expected_bytes(net.backbone), net.backbone.num_features, counter.get_total_flops()


def head_cost(model: str, num_classes: int, head: str, batch_size: int, gpus: int) -> HeadCost:
    """Bytes and FLOPs of one configuration on `gpus` GPUs."""
    gradient, backbone, features, flops = _measure(model, num_classes, head)
    if head == "sharded":  # the head's weight gradient stays on its rank; its activations travel instead
        collectives = expected_collective_bytes(batch_size, features, gpus, torch.bfloat16)
        return HeadCost(head, backbone, flops, collectives)
    return HeadCost(head, gradient, flops)


def head_collective_time(collectives: dict[str, int], gpus: int, cluster: str) -> float:
    """The sharded head's collectives in seconds; nccl-tests sizes: an all-gather's is its output, n inputs;
    the all-reduce entry is three calls of a third each (the softmax's max, sum and target)."""
    if gpus == 1 or not collectives:
        return 0.0
    t = nccl.collective_time("all_gather", collectives["all_gather"] * gpus, gpus, cluster)
    t += 3 * nccl.collective_time("all_reduce", collectives["all_reduce"] / 3, gpus, cluster)
    return t + nccl.collective_time("reduce_scatter", collectives["reduce_scatter"], gpus, cluster)


def allreduce_time(nbytes: int, gpus: int, cluster: str, bucket_bytes: int) -> tuple[float, float]:
    """(all buckets, the last one) in seconds: DDP reduces the gradient in buckets, in turn."""
    if nbytes == 0 or gpus == 1:
        return 0.0, 0.0
    full, rest = divmod(nbytes, bucket_bytes)
    each = nccl.collective_time("all_reduce", bucket_bytes, gpus, cluster) if full else 0.0
    last = nccl.collective_time("all_reduce", rest, gpus, cluster) if rest else each
    return full * each + (last if rest else 0.0), last


def plan(
    model: str,
    num_classes: int,
    heads: list[str],
    gpus: list[int],
    cluster: str,
    batch_size: int = 32,
    bucket_cap_mb: float = 25.0,
    mfu: float = MFU,
) -> list[dict]:
    device = DEVICES[CLUSTER_DEVICE.get(cluster, "h100")]
    rows = []
    for n in gpus:
        costs = [head_cost(model, num_classes, h, batch_size, n) for h in heads]
        for c in costs:
            compute = c.flops_per_sample * batch_size / (device.peak_flops * mfu)
            backward = compute * 2 / 3  # backward is about twice the forward's FLOPs
            comm, last = allreduce_time(c.gradient_bytes, n, cluster, int(bucket_cap_mb * 2**20))
            head_comm = head_collective_time(c.head_collectives, n, cluster)  # on the critical path
            exposed = (max(comm - backward, last) if comm else 0.0) + head_comm
            step = compute + exposed
            rows.append(
                {
                    "gpus": n,
                    "head": c.head,
                    "bytes_per_step": c.gradient_bytes + c.head_collective_bytes,
                    "collective_ms": (comm + head_comm) * 1e3,
                    "exposed_ms": exposed * 1e3,
                    "compute_ms": compute * 1e3,
                    "step_ms": step * 1e3,
                    "comm_share": (comm + head_comm) / step if step else 0.0,
                }
            )
    for r in rows:  # speed-up over the learned head at the same scale, where it was asked for
        base = next((b for b in rows if b["gpus"] == r["gpus"] and b["head"] == "learned"), None)
        r["speedup_vs_learned"] = base["step_ms"] / r["step_ms"] if base else None
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| GPUs | head | MB/step | collective ms | exposed ms | step ms | comm share | vs learned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = "" if r["speedup_vs_learned"] is None else f"{r['speedup_vs_learned']:.2f}x"
        lines.append(
            f"| {r['gpus']:,} | {r['head']} | {r['bytes_per_step'] / 1e6:,.1f} | {r['collective_ms']:,.1f} "
            f"| {r['exposed_ms']:,.1f} | {r['step_ms']:,.1f} | {r['comm_share']:.0%} | {speed} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"a comma-separated list of positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    from distbench.checks import _known
    from distbench.config import ConfigError
    from distbench.heads import HEADS
    from distbench.models import check_model_name

    p = argparse.ArgumentParser(prog="python -m distbench.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--num-classes", type=int, default=100_000)
    p.add_argument("--heads", default="learned,fixed", help="comma-separated head names")
    p.add_argument("--gpus", type=_ints, default=[8, 64, 1024], help="comma-separated GPU counts")
    p.add_argument("--cluster", default="h100-ib-ndr", help=f"one of: {', '.join(nccl.PRESETS)}")
    p.add_argument("--batch-size", type=int, default=32, help="samples per GPU per step")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0)
    p.add_argument("--mfu", type=float, default=MFU, help="fraction of the device's peak a step reaches")
    p.add_argument("--json", action="store_true", help="the rows as JSON, for scripts")
    args = p.parse_args(argv)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    try:
        _known("model.model", check_model_name, args.model)
        for h in heads:
            _known("heads", HEADS.get, h)
        if args.cluster not in nccl.PRESETS:
            raise ConfigError("cluster", f"unknown cluster {args.cluster!r}; choose from: {', '.join(nccl.PRESETS)}")
        if args.num_classes < 2 or args.batch_size < 1 or not 0 < args.mfu <= 1:
            raise ConfigError("num_classes", "--num-classes >= 2, --batch-size >= 1 and 0 < --mfu <= 1")
    except ConfigError as e:
        print(f"python -m distbench.plan: error: {e}", file=sys.stderr)
        return 2
    rows = plan(
        args.model, args.num_classes, heads, args.gpus, args.cluster, args.batch_size, args.bucket_cap_mb, args.mfu
    )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    device = DEVICES[CLUSTER_DEVICE.get(args.cluster, "h100")]
    preset = nccl.PRESETS[args.cluster]
    print(
        f"{args.model}, {args.num_classes:,} classes, batch {args.batch_size} per GPU, DDP buckets of "
        f"{args.bucket_cap_mb:g} MiB, on {args.cluster} ({preset.gpus_per_node} GPUs per node)\n"
        f"Assumed: compute from FLOPs at {args.mfu:.0%} of {device.name}'s {device.peak_flops / 1e12:,.0f} TFLOPS "
        f"(bf16 dense; an assumption: a real step can be 2x either way); NCCL ring/tree per bucket (distbench.nccl, "
        f"Simple protocol, no NVLS/SHARP); buckets overlap the backward pass, the last does not.\n"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
