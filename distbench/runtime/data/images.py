"""Image data sets (samples are (C, H, W) images, targets class ids):

- `synthetic`: a learnable C-class task generated on the device (no loader in the step time), with a
  Bayes-optimal oracle for its held-out samples.
- `digits`: scikit-learn's bundled 8x8 handwritten digits (real, 10 classes, fixed split).
- `fashion-mnist`: Debian's dataset-fashion-mnist idx files (real, 10 classes).
- `imagefolder`: ImageNet-1K layout (DATA_DIR/train/<class>/*, DATA_DIR/val/<class>/*).
"""

from __future__ import annotations

import functools
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from distbench.config import ConfigError, DataError
from distbench.runtime.data.base import (
    DATASETS,
    Batch,
    Dataset,
    Shard,
    _hash_uniform,
    eval_count,
    eval_share,
    stream_generator,
)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------- synthetic
class SyntheticTask:
    """Class c has a code z_c in R^d drawn from N(0, I) by hashing (seed, c, k): no C x d table exists,
    so memory does not grow with C (1M classes cost nothing). A sample of class c is

        x = upsample(G (z_c + noise * e)) ,   e ~ N(0, I_d)

    with G a fixed random map from R^d to a coarse 3 x 8 x 8 image, upsampled to the model's input size.
    G (d <= 192) and the upsampling are injective, so x determines z = z_c + noise * e, and with equally
    likely classes the Bayes-optimal decision is the nearest code: `nearest_code` is the oracle.

    Difficulty: the Bayes error grows with noise / (distance between codes). Random codes are about
    sqrt(2 d) apart and the nearest of C - 1 others a little closer, so a larger d keeps 100K classes
    apart at a noise that makes 100 classes hard at d = 8. How fast a network learns is a separate
    matter: see README, "Synthetic task".
    """

    coarse = 8

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        noise: float,
        seed: int,
        device: torch.device,
        code_dim: int = 64,
    ) -> None:
        self.num_classes, self.input_shape, self.noise, self.seed = num_classes, input_shape, noise, seed
        self.code_dim, self.device = code_dim, device
        gen = torch.Generator().manual_seed(seed)
        c = input_shape[0]
        self.proj = (torch.randn(code_dim, c * self.coarse**2, generator=gen) / math.sqrt(code_dim)).to(device)

    def codes(self, labels: torch.Tensor) -> torch.Tensor:
        k = torch.arange(self.code_dim, device=labels.device)
        base = ((self.seed % 1000) * self.num_classes + labels[:, None]) * (2 * self.code_dim) + 2 * k
        u1, u2 = _hash_uniform(base), _hash_uniform(base + 1)
        normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)  # Box-Muller
        return normal.to(torch.float32)

    def noisy_codes(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z = self.codes(labels)
        return z + self.noise * torch.randn(z.shape, generator=gen, device=z.device)

    def render(self, z: torch.Tensor) -> torch.Tensor:
        c, h, w = self.input_shape
        img = (z @ self.proj).view(len(z), c, self.coarse, self.coarse)
        return F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)

    def sample(self, labels: torch.Tensor, gen: torch.Generator) -> Batch:
        return self.render(self.noisy_codes(labels, gen)), labels

    @torch.no_grad()
    def nearest_code(self, z: torch.Tensor, chunk: int = 1 << 15) -> torch.Tensor:
        """argmin_c ||z - z_c|| over all C classes = argmax_c (z . z_c - ||z_c||^2 / 2), a chunk of
        classes at a time, so memory stays O(len(z) x chunk) at 1M classes."""
        best = torch.full((len(z),), -math.inf, device=z.device)
        arg = torch.zeros(len(z), dtype=torch.long, device=z.device)
        for start in range(0, self.num_classes, chunk):
            classes = torch.arange(start, min(start + chunk, self.num_classes), device=z.device)
            codes = self.codes(classes)
            score, idx = (z @ codes.T - 0.5 * codes.square().sum(1)).max(1)
            better = score > best
            best, arg = torch.where(better, score, best), torch.where(better, classes[idx], arg)
        return arg


def class_stream(num_classes: int, batch_size: int, shard: Shard, seed: int, start: int = 0) -> Iterator[torch.Tensor]:
    """This rank's labels, step after step from step `start`: every class once per epoch, in a new random
    order each epoch that all ranks share. Step s takes positions [s n, (s + 1) n) of the epochs' orders laid
    end to end (n = world_size x batch_size) and rank r its r-th slice of them, so after k epochs every class
    has been seen exactly k times, whatever C (i.i.d. labels would leave e^-k of the classes unseen).

    Epoch e's order is drawn from its own seed, so any step is reached at once (a resume at step 10^6 costs
    what step 0 does) and a step's work is its own batch, not the stream before it."""
    cached: dict[int, torch.Tensor] = {}

    def order(epoch: int) -> torch.Tensor:
        if epoch not in cached:
            cached.clear()  # consecutive steps touch the same epoch, or the next: keep one
            gen = torch.Generator().manual_seed((seed * 1_000_003 + 17) * 1_000_033 + epoch)
            cached[epoch] = torch.randperm(num_classes, generator=gen)
        return cached[epoch]

    need = batch_size * shard.world_size
    step = start
    while True:
        lo = step * need + shard.rank * batch_size  # this rank's positions [lo, lo + batch_size)
        hi = lo + batch_size
        parts = []
        for epoch in range(lo // num_classes, (hi - 1) // num_classes + 1):
            base = epoch * num_classes
            parts.append(order(epoch)[max(lo - base, 0) : min(hi - base, num_classes)])
        yield (torch.cat(parts) if len(parts) > 1 else parts[0]).to(shard.device)
        step += 1


@DATASETS.register("synthetic")
def synthetic(
    cfg, num_classes: int, input_shape: tuple[int, int, int], batch_size: int, shard: Shard, seed: int
) -> Dataset:
    task = SyntheticTask(num_classes, input_shape, cfg.noise, seed, shard.device, cfg.code_dim)

    def train(start: int = 0) -> Iterator[Batch]:
        # Step s draws its noise from stream 2 + s (stream 1 is the held-out set's): a resume at any step
        # draws nothing to get there.
        for step, labels in enumerate(class_stream(num_classes, batch_size, shard, seed, start), start):
            yield task.sample(labels, stream_generator(seed, 2 + step, shard))

    def eval_codes() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(noisy code, label) of this rank's held-out samples, batch by batch: labels i.i.d. uniform."""
        gen, left = stream_generator(seed, 1, shard), len(eval_share(cfg.eval_samples, shard))
        while left > 0:
            n = min(batch_size, left)
            left -= n
            labels = torch.randint(num_classes, (n,), generator=gen, device=shard.device)
            yield task.noisy_codes(labels, gen), labels

    def evaluate() -> Iterator[Batch]:
        for z, labels in eval_codes():
            yield task.render(z), labels

    @functools.cache  # the same held-out samples at every evaluation of a learning curve
    def oracle_hits() -> int:
        pairs = list(eval_codes())  # the very samples evaluate() yields
        if not pairs:
            return 0
        z, labels = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        return int((task.nearest_code(z) == labels).sum())

    return Dataset(num_classes, train, evaluate, cfg.eval_samples, oracle_hits)


# ------------------------------------------------------------------------------------------------ tensors
def _tensor_dataset(
    x_train, y_train, x_eval, y_eval, batch_size: int, shard: Shard, seed: int, num_classes: int, prepare=None
) -> Dataset:
    """Small in-memory data sets: whole tensors on the device, DistributedSampler-style sharding.
    `prepare` turns a stored batch into model input (e.g. uint8 28x28 -> float 3x32x32)."""
    prepare = prepare or (lambda x: x)
    from torch.utils.data import DistributedSampler

    x_train, y_train = x_train.to(shard.device), y_train.to(shard.device)
    sampler = DistributedSampler(
        range(len(y_train)), shard.world_size, shard.rank, shuffle=True, seed=seed, drop_last=True
    )

    per_epoch = max(len(sampler) // batch_size, 1)

    def train(start: int = 0) -> Iterator[Batch]:
        epoch, skip = divmod(start, per_epoch)
        while True:
            sampler.set_epoch(epoch)
            idx = torch.tensor(list(sampler), device=shard.device)
            for i in range(skip * batch_size, per_epoch * batch_size, batch_size):
                yield prepare(x_train[idx[i : i + batch_size]]), y_train[idx[i : i + batch_size]]
            epoch, skip = epoch + 1, 0

    share = torch.tensor(eval_share(len(y_eval), shard))

    def evaluate() -> Iterator[Batch]:
        for i in range(0, len(share), batch_size):
            idx = share[i : i + batch_size]
            yield prepare(x_eval[idx].to(shard.device)), y_eval[idx].to(shard.device)

    return Dataset(num_classes, train, evaluate, len(y_eval))


def _fit_images(x: torch.Tensor, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """Grey N x 1 x h x w images in [0, 1] -> standardised N x C x H x W for the model."""
    c, h, w = input_shape
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False) if x.shape[-2:] != (h, w) else x
    x = (x - x.mean()) / x.std()
    return x.expand(-1, c, -1, -1).contiguous()


@DATASETS.register("digits")
def digits(
    cfg, num_classes: int, input_shape: tuple[int, int, int], batch_size: int, shard: Shard, seed: int
) -> Dataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # fixed split, any --seed
    x, y = _fit_images(x[order], input_shape), y[order]
    n_eval = 297  # 1500 train / 297 test
    eval_n = eval_count(n_eval, cfg.eval_samples)
    return _tensor_dataset(
        x[:-n_eval], y[:-n_eval], x[-n_eval:][:eval_n], y[-n_eval:][:eval_n], batch_size, shard, seed, 10
    )


# ------------------------------------------------------------------------------------------ fashion-mnist
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "eval_x": "t10k-images-idx3-ubyte.gz",
    "eval_y": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # of the 60K training images, pixels in [0, 1]


def read_idx(path: Path) -> torch.Tensor:
    """An idx file (LeCun's MNIST format), gzipped or not, as a uint8 tensor of its stored shape."""
    import gzip
    import struct

    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).view(*shape)


@DATASETS.register("fashion-mnist")
def fashion_mnist(
    cfg, num_classes: int, input_shape: tuple[int, int, int], batch_size: int, shard: Shard, seed: int
) -> Dataset:
    """The full 60K/10K Fashion-MNIST from its original idx files. Images stay uint8 28x28 on the device
    and are resized per batch: a float 3x32x32 copy of the training set would take 740 MB per rank."""
    root = Path(cfg.data_dir or FASHION_MNIST_DIR)
    t = {k: read_idx(root / f) for k, f in FASHION_MNIST_FILES.items()}
    c, h, w = input_shape

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1).float().div_(255.0)
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return ((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).expand(-1, c, -1, -1)

    eval_n = eval_count(len(t["eval_y"]), cfg.eval_samples)
    return _tensor_dataset(
        t["train_x"],
        t["train_y"].long(),
        t["eval_x"][:eval_n],
        t["eval_y"][:eval_n].long(),
        batch_size,
        shard,
        seed,
        10,
        prepare,
    )


# -------------------------------------------------------------------------------------------- imagefolder
# torchvision.datasets.folder.IMG_EXTENSIONS, without importing torchvision for the up-front check
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _class_dirs(split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir() if p.is_dir())


def _has_image(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file() for e in entries)


def check_imagefolder(data_dir: str | None, num_classes: int) -> None:
    """Cheap checks before any process starts work: the layout exists, the class count matches, and no class
    folder is empty (torchvision would stop the run with a traceback)."""
    if not data_dir:
        raise ConfigError("data.data_dir", "imagefolder needs --data-dir (a folder with train/ and val/)")
    root = Path(data_dir)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ConfigError("data.data_dir", f"{root / split} is not a directory (expected ImageNet layout)")
    n_train, n_val = len(_class_dirs(root / "train")), len(_class_dirs(root / "val"))
    if n_train != n_val:
        raise ConfigError("data.data_dir", f"train/ has {n_train} classes but val/ has {n_val}")
    if n_train != num_classes:
        raise ConfigError(
            "model.num_classes", f"{root / 'train'} has {n_train} classes, got --num-classes {num_classes}"
        )
    for split in ("train", "val"):
        for name in _class_dirs(root / split):
            if not _has_image(root / split / name):
                raise ConfigError(
                    "data.data_dir", f"{root / split / name} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
                )


def _leave_signals_to_the_rank(worker_id: int) -> None:
    """Loader workers leave stop signals to their rank, which stops where the ranks agree; a worker that died
    of one would instead fail the rank's next batch. torchrun signals the rank's process group: a group of
    their own keeps them out of it. SIGINT (a terminal's) and SIGUSR1 (Slurm's warning) are ignored; SIGTERM
    keeps its default, which is how torch and multiprocessing end a worker that does not stop when asked."""
    os.setpgid(0, 0)
    for s in (signal.SIGINT, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)


def _readable_folder(root: Path, transform, skip_bad: bool):
    """torchvision's ImageFolder whose samples say which unreadable files they skipped: one that cannot be
    read raises DataError naming it, or with `skip_bad` is replaced by the next readable one and reported."""
    from torchvision import datasets

    class Folder(datasets.ImageFolder):
        def __getitem__(self, index: int):
            skipped = []
            for attempt in range(len(self.samples)):
                path, target = self.samples[(index + attempt) % len(self.samples)]
                try:
                    image = self.loader(path)
                except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError
                    reason = " ".join(f"{type(e).__name__}: {e}".split())
                    if not skip_bad:
                        raise DataError(f"cannot read image {path} ({reason})") from None
                    skipped.append(path)
                    continue
                return self.transform(image), target, skipped
            raise DataError(f"no readable image in {self.root}")

    return Folder(str(root), transform)


def _collate(samples):
    from torch.utils.data import default_collate

    x, y = default_collate([(x, y) for x, y, _ in samples])
    return x, y, [path for *_, skipped in samples for path in skipped]


@DATASETS.register("imagefolder")
def imagefolder(
    cfg, num_classes: int, input_shape: tuple[int, int, int], batch_size: int, shard: Shard, seed: int
) -> Dataset:
    from torch.utils.data import DataLoader, DistributedSampler, Subset
    from torchvision import transforms

    check_imagefolder(cfg.data_dir, num_classes)
    size = input_shape[1]
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_set = _readable_folder(
        Path(cfg.data_dir) / "train",
        transforms.Compose(
            [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
        ),
        cfg.skip_bad_images,
    )
    val_set = _readable_folder(
        Path(cfg.data_dir) / "val",
        transforms.Compose(
            [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size), transforms.ToTensor(), normalize]
        ),
        cfg.skip_bad_images,
    )
    eval_n = eval_count(len(val_set), cfg.eval_samples)
    pin = shard.device.type == "cuda"
    sampler = DistributedSampler(train_set, shard.world_size, shard.rank, shuffle=True, seed=seed, drop_last=True)
    loader_args = {
        "batch_size": batch_size,
        "num_workers": cfg.workers,
        "pin_memory": pin,
        "persistent_workers": cfg.workers > 0,
        "collate_fn": _collate,
        "worker_init_fn": _leave_signals_to_the_rank if cfg.workers > 0 else None,
    }
    skipped: set[str] = set()

    def to_device(batches) -> Iterator[Batch]:
        for x, y, bad in batches:
            skipped.update(bad)
            yield x.to(shard.device, non_blocking=True), y.to(shard.device, non_blocking=True)

    per_epoch = max(len(sampler) // batch_size, 1)

    def train(start: int = 0) -> Iterator[Batch]:
        # The sample order resumes exactly; random crops and flips are drawn afresh by the loader's workers.
        epoch, skip = divmod(start, per_epoch)
        if skip:
            sampler.set_epoch(epoch)
            rest = list(sampler)[skip * batch_size :]
            yield from to_device(DataLoader(Subset(train_set, rest), drop_last=True, **loader_args))
            epoch += 1
        loader = DataLoader(train_set, sampler=sampler, drop_last=True, **loader_args)
        while True:
            sampler.set_epoch(epoch)
            yield from to_device(loader)
            epoch += 1

    def evaluate() -> Iterator[Batch]:
        share = Subset(val_set, list(eval_share(eval_n, shard)))
        yield from to_device(DataLoader(share, shuffle=False, **{**loader_args, "persistent_workers": False}))

    return Dataset(num_classes, train, evaluate, eval_n, skipped=(lambda: skipped) if cfg.skip_bad_images else None)
