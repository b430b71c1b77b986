import pytest
import torch

from distbench.config import ConfigError, DataConfig
from distbench.runtime.checks import parse_and_check
from distbench.runtime.data import Shard, SyntheticTask, build_dataset

CPU = torch.device("cpu")


def shard(rank=0, world=1):
    return Shard(rank, world, CPU)


def test_synthetic_is_deterministic_and_rank_dependent():
    cfg = DataConfig(eval_samples=10)
    a = next(build_dataset(cfg, 100, (3, 32, 32), 4, shard(), 0).train())
    b = next(build_dataset(cfg, 100, (3, 32, 32), 4, shard(), 0).train())
    c = next(build_dataset(cfg, 100, (3, 32, 32), 4, shard(1, 2), 0).train())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (4, 3, 32, 32) and a[1].dtype == torch.long


def test_synthetic_memory_does_not_grow_with_classes():
    small = SyntheticTask(10, (3, 32, 32), 1.0, 0, CPU)
    huge = SyntheticTask(1_000_000, (3, 32, 32), 1.0, 0, CPU)

    def state(t):
        return sum(v.numel() for v in vars(t).values() if isinstance(v, torch.Tensor))

    assert state(small) == state(huge)
    labels = torch.tensor([0, 5, 999_999] * 4)
    x, y = huge.sample(labels, torch.Generator().manual_seed(0))
    assert x.shape == (12, 3, 32, 32) and torch.equal(y, labels)
    codes = huge.codes(torch.tensor([0, 999_999, 0]))
    assert torch.equal(codes[0], codes[2]) and not torch.equal(codes[0], codes[1])
    assert abs(huge.codes(torch.arange(2000)).std().item() - 1) < 0.05  # N(0, 1) codes


@pytest.mark.parametrize("world,batch,classes", [(1, 7, 20), (2, 4, 20), (2, 3, 10), (3, 8, 1000)])
def test_class_stream_shows_every_class_once_per_epoch_across_ranks(world, batch, classes):
    from distbench.runtime.data import class_stream

    steps = 6 * classes // (world * batch)  # whole epochs of samples: about six
    streams = [class_stream(classes, batch, shard(r, world), seed=3) for r in range(world)]
    per_step = [torch.cat([next(s) for s in streams]) for _ in range(steps)]
    seen = torch.cat(per_step)
    counts = torch.bincount(seen, minlength=classes)
    epochs = len(seen) // classes
    assert counts.min() >= epochs and counts.max() <= epochs + 1  # exact up to the epoch under way
    first = torch.cat(per_step)[: epochs * classes].view(epochs, classes)
    assert all(torch.equal(row.sort().values, torch.arange(classes)) for row in first)  # each epoch a permutation
    assert not torch.equal(first[0], first[1])  # a new order each epoch


def test_oracle_is_the_nearest_code_on_the_held_out_samples():
    cfg = DataConfig(eval_samples=300, noise=1.5, code_dim=8)  # noisy enough for the oracle to err
    ds = build_dataset(cfg, 50, (3, 16, 16), 32, shard(), 0)
    task = SyntheticTask(50, (3, 16, 16), 1.5, 0, CPU, code_dim=8)
    # Independently of how the stream draws them: the image is a linear function of z (render), so z is
    # recovered from each held-out image by least squares, then classified by the nearest code.
    basis = task.render(torch.eye(8)).flatten(1).T.double()  # pixels x d
    hits = 0
    for x, y in ds.eval():
        z = torch.linalg.lstsq(basis, x.flatten(1).T.double()).solution.T.float()
        hits += int((torch.cdist(z, task.codes(torch.arange(50))).argmin(1) == y).sum())
    assert ds.oracle_hits() == hits
    assert 0.3 * 300 < hits < 300  # neither trivial nor hopeless at this noise


def test_oracle_of_a_noiseless_task_is_perfect_and_chunking_changes_nothing():
    task = SyntheticTask(5000, (3, 8, 8), 0.0, 0, CPU)
    labels = torch.randint(5000, (64,), generator=torch.Generator().manual_seed(0))
    z = task.noisy_codes(labels, torch.Generator())
    assert torch.equal(task.nearest_code(z), labels)
    assert torch.equal(task.nearest_code(z, chunk=777), labels)


def test_real_data_has_no_oracle():
    assert (
        build_dataset(DataConfig(dataset="digits", eval_samples=0), 10, (3, 32, 32), 16, shard(), 0).oracle_hits is None
    )


def test_eval_shares_cover_the_held_out_set_once():
    cfg = DataConfig(eval_samples=101)
    sizes = [sum(len(y) for _, y in build_dataset(cfg, 10, (3, 32, 32), 8, shard(r, 3), 0).eval()) for r in range(3)]
    assert sum(sizes) == 101


def test_digits_split_and_shapes():
    cfg = DataConfig(dataset="digits", eval_samples=0)
    ds = build_dataset(cfg, 10, (3, 32, 32), 16, shard(), 0)
    x, _ = next(ds.train())
    assert x.shape == (16, 3, 32, 32) and ds.eval_size == 297
    assert sum(len(y) for _, y in ds.eval()) == 297


def make_imagefolder(root, classes=3, per_class=4, size=40):
    from PIL import Image

    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (size, size + i), color=(40 * c, 10 * i, 100)).save(d / f"{i}.jpg")
    return root


def test_imagefolder_loads_with_distributed_sampler(tmp_path):
    root = make_imagefolder(tmp_path)
    cfg = DataConfig(dataset="imagefolder", data_dir=str(root), workers=0, eval_samples=0)
    ds0 = build_dataset(cfg, 3, (3, 32, 32), 2, shard(0, 2), 0)
    ds1 = build_dataset(cfg, 3, (3, 32, 32), 2, shard(1, 2), 0)
    x, y = next(ds0.train())
    assert x.shape == (2, 3, 32, 32) and y.max() < 3
    assert sum(len(y) for _, y in ds0.eval()) + sum(len(y) for _, y in ds1.eval()) == 12


def test_imagefolder_class_count_mismatch_is_a_config_error(tmp_path):
    root = make_imagefolder(tmp_path)
    with pytest.raises(ConfigError, match="has 3 classes, got --num-classes 5") as e:
        parse_and_check(["--dataset", "imagefolder", "--data-dir", str(root), "--num-classes", "5"])
    assert e.value.field == "model.num_classes"
    with pytest.raises(ConfigError, match="not a directory") as e:
        parse_and_check(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "train"), "--num-classes", "3"])
    assert e.value.field == "data.data_dir"


def test_fashion_mnist_full_split():
    from pathlib import Path

    from distbench.runtime.data import FASHION_MNIST_DIR

    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
    cfg = DataConfig(dataset="fashion-mnist", eval_samples=0)
    ds = build_dataset(cfg, 10, (3, 32, 32), 64, shard(0, 2), 0)
    x, y = next(ds.train())
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and int(y.max()) <= 9
    assert abs(x.mean().item()) < 0.3  # standardised
    assert ds.eval_size == 10_000 and sum(len(y) for _, y in ds.eval()) == 5_000  # rank 0's half


def test_fashion_mnist_missing_files_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="dataset-fashion-mnist") as e:
        parse_and_check(["--dataset", "fashion-mnist", "--num-classes", "10", "--data-dir", str(tmp_path)])
    assert e.value.field == "data.data_dir"
