"""The sharded head (learned, split by classes over the ranks) against the replicated learned head:
real gloo process groups, the same initial weights, the same loss and gradients within float tolerance."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import SHORT, flags, torchrun
from torch import nn

from distbench.comm.expected import sharded_head_collectives
from distbench.comm.meter import CommMeter
from distbench.model.heads.sharded import ShardedHead, class_range
from distbench.results import validate
from distbench.runtime.engines.collectives import Collectives

N, C, B, WORLD = 16, 7, 4, 2  # 7 classes over 2 ranks: shards of 3 and 4, smaller than top-5


def test_sharded_head_alone_is_the_learned_head():
    torch.manual_seed(0)
    learned = nn.Linear(N, C)
    torch.manual_seed(0)
    sharded = ShardedHead(N, C)  # a world of one until an engine shards it
    x, y = torch.randn(B, N), torch.randint(C, (B,))
    assert torch.equal(sharded(x), learned(x))
    assert torch.allclose(sharded.loss(x, y), F.cross_entropy(learned(x), y))
    top, losses = sharded.evaluate(x, y, 5)
    assert torch.equal(top, learned(x).topk(5, dim=1).indices)
    assert torch.allclose(losses, F.cross_entropy(learned(x), y, reduction="none"))


def test_class_ranges_cover_every_class_once():
    for c, n in ((7, 2), (100_000, 8), (5, 5)):
        ranges = [class_range(c, r, n) for r in range(n)]
        assert ranges[0][0] == 0 and ranges[-1][1] == c
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def _worker(rank: int, store_path: str, out: str) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    reference = nn.Linear(N, C)  # the replicated head, over the whole global batch
    torch.manual_seed(0)
    head = ShardedHead(N, C)
    meter = CommMeter()
    head.shard(Collectives(meter))
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(WORLD * B, N, generator=gen)
    labels = torch.randint(C, (WORLD * B,), generator=gen)
    mine = slice(rank * B, (rank + 1) * B)

    local = features[mine].clone().requires_grad_()
    meter.start_step()
    loss = head.loss(local, labels[mine])
    loss.backward()
    traffic = meter.end_step()

    full = features.clone().requires_grad_()
    ref_loss = F.cross_entropy(reference(full), labels)
    ref_loss.backward()
    lo, hi = class_range(C, rank, WORLD)
    # Evaluation with unequal batches: rank 0 scores 3 samples, rank 1 scores 2.
    keep = 3 - rank
    top, losses = head.evaluate(features[mine][:keep], labels[mine][:keep], 5)
    ref_logits = reference(features).detach()
    result = {
        "loss": [loss.item(), ref_loss.item()],
        "weight_grad": torch.allclose(head.weight.grad, reference.weight.grad[lo:hi], atol=1e-6),
        "bias_grad": torch.allclose(head.bias.grad, reference.bias.grad[lo:hi], atol=1e-6),
        # x n: DDP will average the backbone's gradients over the ranks (see sharded._Gather)
        "feature_grad": torch.allclose(local.grad, WORLD * full.grad[mine], atol=1e-6),
        "top": torch.equal(top, ref_logits[mine][:keep].topk(5, dim=1).indices),
        "eval_loss": torch.allclose(
            losses, F.cross_entropy(ref_logits[mine][:keep], labels[mine][:keep], reduction="none"), atol=1e-6
        ),
        "bytes": traffic.bytes_by_op,
        "payload": traffic.payload,
    }
    with open(f"{out}.{rank}", "w") as fh:
        json.dump(result, fh)
    dist.destroy_process_group()


def test_sharded_head_on_two_ranks_matches_the_replicated_head(tmp_path):
    out = str(tmp_path / "result")
    mp.start_processes(_worker, args=(str(tmp_path / "store"), out), nprocs=WORLD, start_method="spawn")
    expected = {c.op: c.bytes for c in sharded_head_collectives(B, N, WORLD)}
    for rank in range(WORLD):
        with open(f"{out}.{rank}") as fh:
            r = json.load(fh)
        assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-6)
        assert r["weight_grad"] and r["bias_grad"] and r["feature_grad"]
        assert r["top"] and r["eval_loss"]  # exact top-5 over all classes from shards of 3 and 4
        assert r["bytes"] == expected and r["payload"] == sum(expected.values())


def test_sharded_run_matches_the_learned_run_and_sends_what_it_should(tmp_path):
    """Two real 2-rank jobs from the same seed: the same losses and accuracy; the sharded run's payload
    is the backbone's gradients plus the head's collectives, exactly, and no head weight gradient."""
    args = flags(num_classes=1000, **SHORT | {"steps": 4, "eval_samples": 30})  # 15 per rank: a short last batch
    records = {}
    for head in ("learned", "sharded"):
        r = torchrun([*args, "--head", head], tmp_path / f"{head}.jsonl")
        assert r.returncode == 0, r.stderr[-3000:]
        records[head] = r.records[0]
        validate(records[head])
        assert records[head]["status"] == "ok" and records[head]["comm"]["replicas_identical"]
    learned, sharded = records["learned"], records["sharded"]
    assert sharded["accuracy"]["final_loss"] == pytest.approx(learned["accuracy"]["final_loss"], rel=1e-5)
    assert sharded["accuracy"]["eval_loss"] == pytest.approx(learned["accuracy"]["eval_loss"], rel=1e-5)
    for k in ("top1", "top5", "eval_samples"):
        assert sharded["accuracy"][k] == learned["accuracy"][k]
    assert sharded["params"] == learned["params"]  # the whole model's counts, all shards together

    comm, batch = sharded["comm"], SHORT["batch_size"]
    head = {c.op: c.bytes for c in sharded_head_collectives(batch, 256, 2)}  # the tiny CNN has N = 256 features
    assert comm["payload_bytes_per_step"] == comm["expected_bytes_per_step"]
    assert comm["collectives"]["all_gather"] == head["all_gather"]
    assert comm["collectives"]["reduce_scatter"] == head["reduce_scatter"]
    head_weights = 4 * (1000 * 256 + 1000)
    backbone = learned["comm"]["payload_bytes_per_step"] - head_weights
    assert comm["collectives"]["all_reduce"] == backbone + head["all_reduce"]


def test_sharded_head_needs_the_ddp_engine(tmp_path):
    from conftest import python_run

    r = python_run(["--head", "sharded", "--backend", "deepspeed"], tmp_path / "runs.jsonl", timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("run.py: error: --head (model.head): sharded runs under")
    assert not os.path.exists(tmp_path / "runs.jsonl")
