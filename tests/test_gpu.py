"""GPU tier: the same command line picks NCCL, one GPU per local rank, bf16 autocast and channels-last."""

import pytest
import torch
from conftest import FAST, torchrun

from distbench.results import validate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("head", ["learned", "fixed", "fixed-fwht", "fixed-srht", "fixed-orthogonal"])
def test_gpu_run_uses_nccl_and_exact_bytes(tmp_path, head):
    n = torch.cuda.device_count()
    r = torchrun([*FAST, "--head", head, "--num-classes", "100000"], tmp_path / "runs.jsonl", nproc=n, gpu=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = r.records[0]
    validate(rec)
    assert rec["env"]["backend"] == "nccl" and rec["env"]["cuda"]
    assert rec["config"]["train"]["precision"] == "auto" and rec["env"]["nccl"]
    assert rec["comm"]["payload_bytes_per_step"] == rec["comm"]["expected_bytes_per_step"]
    assert rec["perf"]["peak_memory_bytes"] > 0


def test_gpu_more_ranks_than_gpus_is_one_line_naming_nproc(tmp_path):
    n = torch.cuda.device_count()
    r = torchrun([*FAST, "--num-classes", "1000"], tmp_path / "runs.jsonl", nproc=n + 1, gpu=True)
    assert r.returncode != 0 and not r.records
    assert f"--nproc-per-node (launch.nproc_per_node): {n + 1} ranks on this node" in r.stderr, r.stderr[-3000:]
