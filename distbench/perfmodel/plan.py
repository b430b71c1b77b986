"""What a saving buys on a GPU cluster, before (or after) training anything.

    python -m distbench.perfmodel.plan --model resnet50 --num-classes 100000 --heads learned,fixed \\
        --gpus 8,64,1024 --cluster h100-ib-ndr
    python -m distbench.perfmodel.plan --records analysis/data --gpus 8,64,1024 --cluster h100-ib-ndr
    python -m distbench.perfmodel.plan --model gpt2-small,gpt2-medium,gpt2-xl --num-classes 50257,128256,262144 \\
        --heads learned,tied,fixed-srht --gpus 64      # the language models' table (docs/language-models.md)

Each configuration is a `Workload`: its gradient bytes per step, its compute time and the window in which
DDP's bucketed all-reduce can hide behind the backward pass. The step is then predicted on `--gpus` GPUs
of an interconnect preset (`distbench.perfmodel.nccl`):

    all-reduce = DDP's buckets of --bucket-cap-mb, one after another, each by NCCL's ring or tree
    exposed    = max(all-reduce - window, last bucket) + residual
    step       = compute + exposed

From a model spec (`--model --num-classes --heads --freeze`) the model is built on the meta device (no
memory, no training): bytes are `comm.expected.step_traffic`, compute is FLOPs (torch's FlopCounterMode, forward
and backward) x batch / (device peak x MFU), the window the backward pass (2/3 of the compute), the
residual 0. The MFU is an assumption and is printed with the table.

From records (`--records`, distbench.run/1 runs with an exposed-communication time, i.e. DDP with
--nosync-steps) everything but the interconnect is measured: bytes are the payload the hook counted,
compute the p50 step time less the exposed communication, and the window is solved from the run itself:
on the interconnect it ran on (`measured` for gloo records, --cluster for NCCL ones) the all-reduce at
its world size n0 takes C(n0), of which it exposed E, so window = C(n0) - E (within [0, compute]) and
residual = max(E - C(n0), 0), the synchronisation cost the model does not explain, kept on that
interconnect only (on a CPU it is mostly gloo's reductions taking cores from compute). On its own
interconnect at n0 the prediction is therefore the measured step itself; elsewhere only the all-reduce
changes.

The sharded head's collectives (features and labels gathered, the feature gradient reduce-scattered) sit
in the forward and backward passes and are counted as exposed. No process group: nothing here runs one.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distbench.comm.expected import step_traffic
from distbench.config import ConfigError, FreezeConfig, ModelConfig
from distbench.perfmodel import nccl


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
# measurement: a real step can differ by a factor of 2 either way (--mfu sets it; --records replaces it).
MFU = 0.1
BACKWARD_SHARE = 2 / 3  # backward is about twice the forward's FLOPs: the window buckets can hide in


@dataclass(frozen=True)
class Workload:
    """One configuration to project: what it sends and how long it computes."""

    label: str  # "fixed head", "learned head, fraction:0.1", a record's variant
    group: str  # what it is compared within: "resnet50, 100,000 classes"
    gradient_bytes: int  # reduced by the data-parallel all-reduce per step
    flops_per_sample: float = 0.0  # forward + backward (spec mode)
    compute_s: float | None = None  # measured (records); None: from FLOPs and the device
    window_s: float | None = None  # measured overlap window (records); None: the backward pass
    residual_s: float = 0.0  # measured synchronisation cost the all-reduce model does not explain
    interconnect: str | None = None  # where the residual was measured (records): it is kept there only
    batch_size: int = 32
    bucket_cap_mb: float = 25.0
    # the sharded head's own collectives per rank and step, by op (the input of each call); {} for others
    head_collectives: dict[str, int] = field(default_factory=dict)
    baseline: str | None = None  # the label it is compared with in its group (None: none)
    world_size: int | None = None  # the record's own n (records)
    run_id: str | None = None  # the record's (records)

    @property
    def head_collective_bytes(self) -> int:
        return sum(self.head_collectives.values())


# -------------------------------------------------------------------------------------------- from specs
# FlopCounterMode counts matmul-like ops, which add up over a graph, and a freeze rule acts on the backbone
# only (distbench.model.build_model): so a model's FLOPs are its backbone's (forward, and backward from its
# features) plus its head's and the loss's (forward, and backward into the features and the head's weights),
# and the backbone's part is the same for every head and class count. Counted once per (model, freeze rule),
# that part is most of the work on the meta device (gpt2-xl: ~4 s a count), so a table of three heads at three
# vocabularies counts each backbone once instead of nine times; tests/test_plan.py holds the sum equal to the
# whole model's count.
_BACKBONE_FLOPS: dict[tuple[str, str], tuple[float, torch.Size]] = {}


def _backbone_flops(model: str, freeze: str, backbone: nn.Module, x: torch.Tensor) -> tuple[float, torch.Size]:
    """FLOPs of `backbone` (forward, and backward from its features) on `x`, and its features' shape; counted
    the first time for (model, freeze), then looked up."""
    if (model, freeze) not in _BACKBONE_FLOPS:
        with FlopCounterMode(display=False) as counter:
            features = backbone(x)
            if features.requires_grad:  # not when a freeze rule fixes the whole backbone
                features.backward(torch.ones_like(features))
        _BACKBONE_FLOPS[model, freeze] = counter.get_total_flops(), features.shape
    return _BACKBONE_FLOPS[model, freeze]


@functools.cache
def _measure(model: str, num_classes: int, head: str, freeze: str = "none") -> tuple[nn.Module, float]:
    """The model built on the meta device (no memory, no weights) and its FLOPs per sample for forward +
    backward (a sequence: FLOPs for all its positions)."""
    from distbench.model import build_model
    from distbench.model.contracts import example_input

    logging.disable(logging.WARNING)  # the fixed heads' warning about shared rows, once per build
    try:
        with torch.device("meta"):
            net = build_model(ModelConfig(model=model, num_classes=num_classes, head=head), FreezeConfig(freeze=freeze))
            backbone, shape = _backbone_flops(model, freeze, net.backbone, example_input(net.backbone, 1))
            features = torch.empty(shape, requires_grad=True)
            with FlopCounterMode(display=False) as counter:
                logits = net.head(features)
                F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long)).backward()
    finally:
        logging.disable(logging.NOTSET)
    return net, backbone + counter.get_total_flops()


def _label(head: str, freeze: str) -> str:
    return f"{head} head" + ("" if freeze == "none" else f", {freeze}")


def spec_workload(
    model: str, num_classes: int, head: str, batch_size: int, gpus: int, freeze: str = "none", bucket_cap_mb=25.0
) -> Workload:
    """One head and freeze rule of a model spec on `gpus` GPUs (the sharded head's traffic depends on n): its
    gradient all-reduce and the sharded head's own collectives (in bf16, as on GPUs) from comm.expected."""
    net, flops = _measure(model, num_classes, head, freeze)
    traffic = step_traffic(net, "ddp", gpus, batch_size, activation_dtype=torch.bfloat16)
    gradient = sum(c.bytes for c in traffic.collectives if c.what == "gradients")
    collectives = {}
    for c in traffic.collectives:
        if c.what != "gradients":
            collectives[c.op] = collectives.get(c.op, 0) + c.bytes
    return Workload(
        label=_label(head, freeze),
        group=f"{model}, {num_classes:,} classes",
        gradient_bytes=gradient,
        flops_per_sample=flops,
        batch_size=batch_size,
        bucket_cap_mb=bucket_cap_mb,
        head_collectives=collectives,
        baseline=_label("learned", "none"),
    )


# ------------------------------------------------------------------------------------------ from records
def record_interconnect(backend: str, cluster: str) -> str:
    """The interconnect a record ran on: this machine's fit for gloo, the planned cluster for NCCL."""
    return "measured" if backend == "gloo" else cluster


def record_workloads(path: str | os.PathLike, cluster: str) -> tuple[list[Workload], int]:
    """Workloads from the distbench.run/1 records under `path`, and how many ok runs were left out (no
    exposed-communication time: DeepSpeed, FSDP, --nosync-steps 0)."""
    import pandas as pd

    from distbench.results.analysis import load_runs

    df = load_runs(path)
    if df.empty:
        return [], 0
    usable = df[df["perf.exposed_comm_ms"].notna()]
    # a variant measured more than once in a group keeps the runs apart by the end of their run ids
    keys = usable[["config.model.model", "config.model.num_classes", "variant"]].astype(str).agg("|".join, axis=1)
    twice = keys.duplicated(keep=False)
    labels = {
        rid: f"{v} ({rid[-6:]})" if d else v
        for rid, v, d in zip(usable["run_id"], usable["variant"], twice, strict=True)
    }
    workloads = []
    for _, r in usable.iterrows():
        n0 = int(r["env.world_size"])
        payload = int(r["comm.payload_bytes_per_step"])
        # older records carry the bucket size only in their config (and older still, not at all: DDP's 25)
        bucket_mb = next((float(v) for v in (r.get("comm.bucket_cap_mb"), r.get("config.dist.bucket_cap_mb"))
                          if v is not None and not pd.isna(v)), 25.0)  # fmt: skip
        exposed = max(float(r["perf.exposed_comm_ms"]), 0.0) / 1e3
        compute = float(r["perf.step_time_ms.p50"]) / 1e3 - exposed
        own = record_interconnect(str(r["env.backend"]), cluster)
        comm, _ = allreduce_time(payload, n0, own, int(bucket_mb * 2**20))
        window = min(max(comm - exposed, 0.0), compute)
        base = r.get("baseline_run_id")
        workloads.append(
            Workload(
                label=labels[r["run_id"]],
                group=f"{r['config.model.model']}, {int(r['config.model.num_classes']):,} classes",
                gradient_bytes=payload,
                compute_s=compute,
                window_s=window,
                residual_s=max(exposed - comm, 0.0),
                batch_size=int(r["config.train.batch_size"]),
                bucket_cap_mb=bucket_mb,
                baseline=labels.get(base) if isinstance(base, str) else None,
                world_size=n0,
                interconnect=own,
                run_id=r["run_id"],
            )
        )
    return workloads, int(len(df) - len(usable))


# ----------------------------------------------------------------------------------------------- predict
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


def predict(w: Workload, n: int, cluster: str, device: Device | None = None, mfu: float = MFU) -> dict:
    """One workload's step on n GPUs of `cluster`, as a row of the table."""
    if w.compute_s is not None:
        compute = w.compute_s
    else:
        compute = w.flops_per_sample * w.batch_size / (device.peak_flops * mfu)
    window = w.window_s if w.window_s is not None else compute * BACKWARD_SHARE
    comm, last = allreduce_time(w.gradient_bytes, n, cluster, int(w.bucket_cap_mb * 2**20))
    head_comm = head_collective_time(w.head_collectives, n, cluster)  # on the critical path
    # the last bucket is ready only when backward ends; a measured window already holds it
    hidden_floor = last if w.window_s is None else 0.0
    # the unexplained part of a run's exposed time belongs to the interconnect it was measured on
    residual = w.residual_s if n > 1 and cluster == w.interconnect else 0.0
    exposed = (max(comm - window, hidden_floor) if comm else 0.0) + head_comm + residual
    step = compute + exposed
    return {
        "group": w.group,
        "gpus": n,
        "head": w.label,
        "bytes_per_step": w.gradient_bytes + w.head_collective_bytes,
        "collective_ms": (comm + head_comm) * 1e3,
        "exposed_ms": exposed * 1e3,
        "compute_ms": compute * 1e3,
        "step_ms": step * 1e3,
        "comm_share": (comm + head_comm) / step if step else 0.0,
        "samples_per_s": w.batch_size * n / step if step else 0.0,
    }


def project(workloads: list[Workload], gpus: list[int], cluster: str, device: Device | None, mfu: float = MFU):
    """Rows for every workload at every n, each with its speed-up over its group's baseline at that n."""
    rows = []
    for n in gpus:
        for w in workloads:
            rows.append({**predict(w, n, cluster, device, mfu), "baseline": w.baseline})
    by_key = {(r["group"], r["gpus"], r["head"]): r for r in rows}
    for r in rows:
        base = by_key.get((r["group"], r["gpus"], r["baseline"]))
        r["speedup_vs_learned"] = base["step_ms"] / r["step_ms"] if base else None
        del r["baseline"]
    return rows


def plan(
    model: str,
    num_classes: int,
    heads: list[str],
    gpus: list[int],
    cluster: str,
    batch_size: int = 32,
    bucket_cap_mb: float = 25.0,
    mfu: float = MFU,
    freezes: tuple[str, ...] = ("none",),
    device: str | None = None,
) -> list[dict]:
    """Rows for a model spec: every head x freeze rule at every n of `gpus`."""
    dev = DEVICES[device or CLUSTER_DEVICE.get(cluster, "h100")]
    rows = []
    for n in gpus:
        workloads = [
            spec_workload(model, num_classes, h, batch_size, n, f, bucket_cap_mb) for f in freezes for h in heads
        ]
        rows += project(workloads, [n], cluster, dev, mfu)
    return rows


def spec_rows(
    models: list[str], classes: list[int], heads: list[str], gpus: list[int], cluster: str, **kw
) -> list[dict]:
    """`plan` for every model at every class count, model by model: one group of rows each."""
    return [row for m in models for c in classes for row in plan(m, c, heads, gpus, cluster, **kw)]


# The language models' projection in docs/language-models.md: GPT-2 small and medium and GPT-2 XL (1.5B, the
# ~1B configuration) at GPT-2's, Llama 3's and a 256K vocabulary, on 64 H100s; the page prints this command.
LM_PLAN = {
    "models": ["gpt2-small", "gpt2-medium", "gpt2-xl"],
    "classes": [50_257, 128_256, 262_144],
    "heads": ["learned", "tied", "fixed-srht"],
    "gpus": [64],
    "cluster": "h100-ib-ndr",
}


def lm_plan_command() -> str:
    lists = {k: ",".join(map(str, v)) for k, v in LM_PLAN.items() if k != "cluster"}
    return (
        f"distbench plan --model {lists['models']} --num-classes {lists['classes']} --heads {lists['heads']} "
        f"--gpus {lists['gpus']} --cluster {LM_PLAN['cluster']}"
    )


def lm_plan_block() -> str:
    """docs/language-models.md's projection: the command, then the table it prints."""
    return f"`{lm_plan_command()}`\n\n{table(spec_rows(**LM_PLAN))}"


def plan_records(path: str | os.PathLike, gpus: list[int], cluster: str) -> tuple[list[dict], int]:
    workloads, skipped = record_workloads(path, cluster)
    return project(workloads, gpus, cluster, None), skipped


# -------------------------------------------------------------------------------------------------- CLI
def table(rows: list[dict]) -> str:
    groups = len({r["group"] for r in rows}) > 1
    lines = [
        f"| {'model | ' if groups else ''}GPUs | head | MB/step | collective ms | exposed ms | step ms | comm share "
        "| vs learned |",
        f"|{'---|' if groups else ''}---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = "" if r["speedup_vs_learned"] is None else f"{r['speedup_vs_learned']:.2f}x"
        lines.append(
            f"| {r['group'] + ' | ' if groups else ''}{r['gpus']:,} | {r['head']} | {r['bytes_per_step'] / 1e6:,.1f} "
            f"| {r['collective_ms']:,.1f} | {r['exposed_ms']:,.1f} | {r['step_ms']:,.1f} | {r['comm_share']:.0%} "
            f"| {speed} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"a comma-separated list of positive integers, got {text!r}")
    return values


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like run.py and the checks below: "error: --flag: why"
        print(f"{self.prog}: error: {message.removeprefix('argument ')}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None):
    p = _Parser(prog="python -m distbench.perfmodel.plan", description=__doc__.split("\n\n")[0])
    spec = p.add_argument_group("from a model spec (built on the meta device)")
    spec.add_argument("--model", default=None, help="comma-separated model names (default resnet50)")
    spec.add_argument("--num-classes", type=_ints, default=None, help="comma-separated class counts (default 100000)")
    spec.add_argument("--heads", default=None, help="comma-separated head names (default learned,fixed)")
    spec.add_argument("--freeze", action="append", default=None, help="a freeze rule; repeat for several")
    spec.add_argument("--batch-size", type=int, default=32, help="samples per GPU per step")
    spec.add_argument("--bucket-cap-mb", type=float, default=25.0)
    spec.add_argument("--mfu", type=float, default=MFU, help="fraction of the device's peak a step reaches")
    spec.add_argument("--device", default=None, help=f"one of: {', '.join(DEVICES)} (default: the cluster's)")
    p.add_argument("--records", default=None, help="a .jsonl file or directory of run records, instead of a spec")
    p.add_argument("--gpus", type=_ints, default=[8, 64, 1024], help="comma-separated GPU counts")
    p.add_argument("--cluster", default="h100-ib-ndr", help=f"one of: {', '.join(nccl.PRESETS)}")
    p.add_argument("--json", action="store_true", help="the rows as JSON, for scripts")
    return p.parse_args(argv)


def _validate(args) -> None:
    """ConfigError naming the first bad flag."""
    from distbench.model.backbones import check_model_name, is_language_model
    from distbench.model.heads import HEADS
    from distbench.model.structure.freeze import parse_rule
    from distbench.runtime.checks import known

    if args.cluster not in nccl.PRESETS:
        raise ConfigError("cluster", f"unknown cluster {args.cluster!r}; choose from: {', '.join(nccl.PRESETS)}")
    if args.records is not None:
        given = [f for f in ("model", "num_classes", "heads", "freeze", "device") if getattr(args, f) is not None]
        if given:
            raise ConfigError("records", f"takes what it needs from the records; drop --{given[0].replace('_', '-')}")
        if not os.path.exists(args.records):
            raise ConfigError("records", f"no such file or directory: {args.records}")
        return
    args.model = [m.strip() for m in (args.model or "resnet50").split(",") if m.strip()]
    args.num_classes = args.num_classes or [100_000]
    args.heads = [h.strip() for h in (args.heads or "learned,fixed").split(",") if h.strip()]
    args.freeze = args.freeze or ["none"]
    if not args.model:
        raise ConfigError("model", "name at least one model")
    for m in args.model:
        known("model", check_model_name, m)
    for h in args.heads:
        known("heads", HEADS.get, h)
    if "tied" in args.heads and not all(map(is_language_model, args.model)):
        raise ConfigError("heads", "tied reuses a language model's token embedding: plan it for gpt-* models only")
    for f in args.freeze:
        known("freeze", parse_rule, f)
    if args.device is None and args.cluster not in CLUSTER_DEVICE:
        raise ConfigError("device", f"--cluster {args.cluster} has no GPU to take FLOPs from: name one of "
                          f"{', '.join(DEVICES)}, or plan from --records")  # fmt: skip
    if args.device is not None and args.device not in DEVICES:
        raise ConfigError("device", f"unknown device {args.device!r}; choose from: {', '.join(DEVICES)}")
    for name, ok in (("num_classes", min(args.num_classes) >= 2), ("batch_size", args.batch_size >= 1),
                     ("mfu", 0 < args.mfu <= 1), ("bucket_cap_mb", args.bucket_cap_mb > 0)):  # fmt: skip
        if not ok:
            raise ConfigError(name, f"out of range: {getattr(args, name)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _validate(args)
    except ConfigError as e:
        print(f"python -m distbench.perfmodel.plan: error: {e.flag}: {e.args[0]}", file=sys.stderr)
        return 2
    preset = nccl.PRESETS[args.cluster]
    if args.records is not None:
        rows, skipped = plan_records(args.records, args.gpus, args.cluster)
        if not rows:
            print(f"python -m distbench.perfmodel.plan: error: --records {args.records}: no DDP run with an exposed-"
                  f"communication time (--nosync-steps) to plan from", file=sys.stderr)  # fmt: skip
            return 2
        header = (
            f"{len(rows) // len(args.gpus)} runs from {args.records} ({skipped} without an exposed time left out), "
            f"on {args.cluster} ({preset.gpus_per_node} GPUs per node)\n"
            f"Measured: each run's compute (p50 step less exposed communication), payload and buckets; its overlap "
            f"window solved from its own exposed time on the interconnect it ran on (gloo: `measured`, this "
            f"machine's fit; NCCL: {args.cluster}). Only the all-reduce is re-predicted at each GPU count: at the "
            f"run's own world size and interconnect the step is the measured one; exposed time the model does "
            f"not explain is kept on that interconnect only.\n"
        )
    else:
        rows = spec_rows(args.model, args.num_classes, args.heads, args.gpus, args.cluster,
                         batch_size=args.batch_size, bucket_cap_mb=args.bucket_cap_mb, mfu=args.mfu,
                         freezes=tuple(args.freeze), device=args.device)  # fmt: skip
        device = DEVICES[args.device or CLUSTER_DEVICE[args.cluster]]
        header = (
            f"{', '.join(args.model)}, {', '.join(f'{c:,}' for c in args.num_classes)} classes, "
            f"batch {args.batch_size} per GPU, DDP buckets of "
            f"{args.bucket_cap_mb:g} MiB, on {args.cluster} ({preset.gpus_per_node} GPUs per node)\n"
            f"Assumed: compute from FLOPs at {args.mfu:.0%} of {device.name}'s {device.peak_flops / 1e12:,.0f} "
            f"TFLOPS (bf16 dense; an assumption: a real step can be 2x either way, so step times and speed-ups "
            f"are as uncertain; bytes are exact); NCCL ring/tree per bucket (distbench.perfmodel.nccl, Simple "
            f"protocol, no NVLS/SHARP; large-message bandwidth within ~15% of published nccl-tests figures); "
            f"buckets overlap the backward pass (2/3 of the compute), the last does not.\n"
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(header)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
