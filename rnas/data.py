"""Datasets, deterministic splits and batch iteration.

Input contract (docs/design.md §3): every tensor this module
returns is ``float32`` in ``[0, 1]`` with shape ``(N, C, H, W)``; labels are ``int64`` of shape
``(N,)``. Normalization (mean/std) is *not* applied here: it is a layer inside each model
(:class:`rnas.models.normalize.Normalize`), so attack epsilons are in pixel units.

Datasets are looked up in the :data:`DATASETS` registry:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no network needed),
  scaled from 0..16 to [0, 1] and upsampled bilinearly to ``image_size``. It has no official test
  split, so one is carved with a fixed seed (:data:`DIGITS_TEST_SPLIT_SEED`) that does not depend
  on the run seed: every seed is evaluated on the same test images.
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn``: read from a local root by
  torchvision's own dataset classes at their native resolution; downloading is opt-in. Missing
  files raise :class:`DatasetNotFoundError` naming the root and the ``data.download`` flag.

Splits: the validation split is carved from the training pool with ``torch.Generator`` seeded by
the run seed; the search further splits its training part 50/50 with :func:`split_half`. Nothing
is cached on disk.

Augmentation (:func:`augment_batch`) acts on a training batch after it is drawn: random crop
after zero padding and a horizontal flip, as the CIFAR papers train (``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``), with every random number drawn from the caller's seeded generator, so
a seed gives the same augmented batches on every device and after a resume.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnas.config import DATASET_SHAPES

__all__ = [
    "DATASETS",
    "DIGITS_TEST_SPLIT_SEED",
    "DatasetInfo",
    "DatasetNotFoundError",
    "Splits",
    "TensorPair",
    "UnknownDatasetError",
    "augment_batch",
    "get_info",
    "iterate_batches",
    "load_splits",
    "split_half",
]

#: Seed of the generator that carves the digits test split. Deliberately independent of the run
#: seed so that every seed (and every method) is evaluated on exactly the same test examples.
DIGITS_TEST_SPLIT_SEED = 20_240_601


class DatasetNotFoundError(FileNotFoundError):
    """A torchvision dataset's files are not under the configured root (one-line message)."""


class UnknownDatasetError(ValueError):
    """A dataset name that is not in :data:`DATASETS`."""


@dataclass(frozen=True)
class TensorPair:
    """Inputs and labels of one split.

    Attributes:
        x: float32 inputs in [0, 1], shape (N, C, H, W).
        y: int64 labels, shape (N,).
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x and y disagree on the number of examples: {self.x.shape[0]} != {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: Tensor) -> TensorPair:
        """The examples at ``index`` (a 1-D long tensor), in that order."""
        return TensorPair(self.x[index], self.y[index])


# A loader reads the raw data of one dataset: (root, download, image_size, test_fraction) ->
# (training pool, test split). Inputs may come back as uint8 (0..255, converted to [0, 1] after
# the splits are selected, so a train_subset of a big set never materializes the whole set in
# float) or already as float32 in [0, 1].
Loader = Callable[[Path, bool, int, float], tuple[TensorPair, TensorPair]]


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    Attributes:
        name: registry key.
        num_classes: number of labels.
        input_channels: C of the (N, C, H, W) inputs.
        image_size: H = W of the inputs (for ``digits`` the size it is upsampled to; the entry
            in :data:`DATASETS` holds the default, :func:`load_splits` returns the size used).
        default_epsilon: customary L-inf radius in pixel units (informative; params.yaml states
            the value a run uses).
        loader: function that reads the training pool and the test split.
    """

    name: str
    num_classes: int
    input_channels: int
    image_size: int
    default_epsilon: float
    loader: Loader = dataclasses.field(repr=False, compare=False)


@dataclass(frozen=True)
class Splits:
    """Train / validation / test splits of one dataset for one seed."""

    train: TensorPair
    val: TensorPair
    test: TensorPair
    info: DatasetInfo


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images (1797, 8, 8) in 0..16, labels (1797,)).

    Read straight from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``,
    the one ``load_digits`` parses: 64 pixel columns then the label), found without importing
    scikit-learn, whose import costs ~1 s of every stage's start-up. Falls back to
    ``sklearn.datasets.load_digits`` where the file is not at that place."""
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",", dtype=np.float64)  # (1797, 65)
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def _load_digits(root: Path, download: bool, image_size: int, test_fraction: float) -> tuple[TensorPair, TensorPair]:
    """scikit-learn's digits: values 0..16 -> [0, 1], bilinear upsampling to ``image_size``."""
    del root, download  # bundled with scikit-learn
    images, target = digits_arrays()
    x = torch.as_tensor(images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.as_tensor(target, dtype=torch.int64)  # (N,)
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0).contiguous()  # (N, 1, image_size, image_size)

    generator = torch.Generator().manual_seed(DIGITS_TEST_SPLIT_SEED)
    perm = torch.randperm(len(y), generator=generator)
    n_test = _fraction_count(test_fraction, len(y), "test_fraction")
    test_index, pool_index = perm[:n_test].sort().values, perm[n_test:].sort().values
    return TensorPair(x[pool_index], y[pool_index]), TensorPair(x[test_index], y[test_index])


def _not_found(name: str, root: Path, expected: Path, err: Exception) -> DatasetNotFoundError:
    message = (
        f"dataset {name!r} not found under {root} (looked for {expected}, checksums included); "
        "put the files there or set data.download: true in params.yaml"
    )
    error = DatasetNotFoundError(message)
    error.__cause__ = err
    return error


def _is_missing_files_error(err: RuntimeError) -> bool:
    """torchvision signals missing or corrupt files with a RuntimeError saying 'not found'."""
    return "not found" in str(err).lower()


def _torchvision_loader(name: str, subfolder: str) -> Loader:
    """Loader for one of torchvision's MNIST / FashionMNIST / CIFAR10 / CIFAR100 / SVHN.

    ``subfolder`` is the folder under ``root`` that torchvision reads (for the error message).
    The uint8 arrays are taken directly from the dataset objects (``.data`` and ``.targets`` or
    ``.labels``), never through PIL images.
    """

    def load(root: Path, download: bool, image_size: int, test_fraction: float) -> tuple[TensorPair, TensorPair]:
        del image_size, test_fraction  # native resolution, official test split
        try:
            train = _read_torchvision(name, root, download, train=True)
            test = _read_torchvision(name, root, download, train=False)
        except FileNotFoundError as err:
            raise _not_found(name, root, root / subfolder, err) from err
        except RuntimeError as err:
            if not _is_missing_files_error(err):
                raise
            raise _not_found(name, root, root / subfolder, err) from err
        return train, test

    return load


def _read_torchvision(name: str, root: Path, download: bool, train: bool) -> TensorPair:
    """One split of a torchvision set as (uint8 (N, C, H, W), int64 (N,))."""
    import numpy as np
    from torchvision import datasets as tvd

    if name in ("mnist", "fashion_mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        ds = cls(str(root), train=train, download=download)
        x = torch.as_tensor(ds.data).unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
    elif name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        ds = cls(str(root), train=train, download=download)
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)  # NHWC -> NCHW
        y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    elif name == "svhn":
        ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
        x = torch.from_numpy(np.ascontiguousarray(ds.data))  # already (N, 3, 32, 32)
        y = torch.as_tensor(np.asarray(ds.labels).reshape(-1), dtype=torch.int64)
    else:  # pragma: no cover - guarded by the registry
        raise UnknownDatasetError(f"no torchvision reader for {name!r}")
    if x.dtype != torch.uint8:
        raise TypeError(f"{name}: expected uint8 images from torchvision, got {x.dtype}")
    return TensorPair(x, y)


def _info(name: str, image_size: int, default_epsilon: float, loader: Loader) -> DatasetInfo:
    classes, channels = DATASET_SHAPES[name]  # rnas.config: params validation reads them without torch
    return DatasetInfo(name, classes, channels, image_size, default_epsilon, loader)


DATASETS: dict[str, DatasetInfo] = {
    "digits": _info("digits", 16, 0.1, _load_digits),
    "mnist": _info("mnist", 28, 0.3, _torchvision_loader("mnist", "MNIST/raw")),
    "fashion_mnist": _info("fashion_mnist", 28, 0.3, _torchvision_loader("fashion_mnist", "FashionMNIST/raw")),
    "cifar10": _info("cifar10", 32, 8 / 255, _torchvision_loader("cifar10", "cifar-10-batches-py")),
    "cifar100": _info("cifar100", 32, 8 / 255, _torchvision_loader("cifar100", "cifar-100-python")),
    "svhn": _info("svhn", 32, 8 / 255, _torchvision_loader("svhn", "{train,test}_32x32.mat")),
}


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def get_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; :class:`UnknownDatasetError` lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {known}") from None


def _fraction_count(fraction: float, n: int, what: str) -> int:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {fraction}")
    return int(round(fraction * n))


def _to_unit_float(pair: TensorPair) -> TensorPair:
    """uint8 0..255 -> float32 [0, 1]; float inputs pass through (as float32)."""
    if pair.x.dtype == torch.uint8:
        x = pair.x.to(torch.float32).div_(255.0)
    else:
        x = pair.x.to(torch.float32)
    return TensorPair(x.contiguous(), pair.y.to(torch.int64))


def load_splits(
    name: str,
    root: str | Path = "data",
    download: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    image_size: int = 16,
    test_fraction: float = 0.2,
    train_subset: int = 0,
) -> Splits:
    """Load ``name`` and split it deterministically.

    Args:
        name: a key of :data:`DATASETS`.
        root: folder torchvision sets are read from (unused for ``digits``).
        download: let torchvision download missing files (opt-in).
        seed: run seed; fixes the train / validation split (``torch.Generator().manual_seed``).
        val_fraction: fraction of the (subset) training pool held out for validation, in [0, 1).
        image_size: side the ``digits`` images are upsampled to. torchvision sets keep their
            native resolution (28 for MNIST-like sets, 32 for CIFAR and SVHN).
        test_fraction: fraction of ``digits`` held out as its test split (fixed seed, the same
            for every run seed); torchvision sets use their official test split.
        train_subset: keep only the first ``train_subset`` examples of the training pool after
            shuffling it with ``seed`` (0 keeps all); the validation split is carved from them.

    Returns:
        :class:`Splits` whose inputs are float32 in [0, 1] (N, C, H, W) and labels int64 (N,).
        ``info.image_size`` is the size actually returned.

    Raises:
        UnknownDatasetError: ``name`` is not registered.
        DatasetNotFoundError: the files of a torchvision set are missing under ``root``.
        ValueError: a fraction or size out of range.
    """
    info = get_info(name)
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if train_subset < 0:
        raise ValueError(f"train_subset must be >= 0 (0 keeps all), got {train_subset}")
    root_path = Path(root).expanduser().resolve()

    pool, test = info.loader(root_path, download, image_size, test_fraction)

    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(pool), generator=generator)
    if train_subset:
        perm = perm[:train_subset]
    n_val = _fraction_count(val_fraction, len(perm), "val_fraction")
    if n_val >= len(perm):
        raise ValueError(f"val_fraction={val_fraction} leaves no training examples")
    val_index, train_index = perm[:n_val], perm[n_val:]

    x_shape = test.x.shape
    info = dataclasses.replace(info, image_size=int(x_shape[-1]))
    return Splits(
        train=_to_unit_float(pool.subset(train_index)),
        val=_to_unit_float(pool.subset(val_index)),
        test=_to_unit_float(test),
        info=info,
    )


def split_half(pair: TensorPair, seed: int) -> tuple[TensorPair, TensorPair]:
    """Deterministic 50/50 split (weights half, architecture half) of ``pair``.

    With an odd number of examples the second half gets the extra one.
    """
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(pair), generator=generator)
    half = len(pair) // 2
    return pair.subset(perm[:half]), pair.subset(perm[half:])


def iterate_batches(
    pair: TensorPair,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` batches of ``pair`` by tensor indexing (no DataLoader, no workers).

    Args:
        pair: the split to iterate.
        batch_size: examples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: visit examples in a random order drawn from ``generator`` (the global RNG when
            ``generator`` is None); otherwise in order.
        generator: source of the order; the same generator state gives the same batches.
        drop_last: skip a final batch smaller than ``batch_size``.

    Yields:
        x (B, C, H, W) and y (B,).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(pair)
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield pair.x[start:end], pair.y[start:end]
        else:
            index = order[start:end]
            yield pair.x[index], pair.y[index]


def augment_batch(x: Tensor, crop_padding: int, flip: bool, generator: torch.Generator | None) -> Tensor:
    """A randomly cropped and flipped copy of the batch ``x`` (B, C, H, W) (``x`` itself when both are off).

    Crop: every example is zero-padded by ``crop_padding`` pixels on each side and an H x W window
    at a uniform offset in [0, 2·crop_padding]² is cut out (torchvision's ``RandomCrop(H,
    padding=p)``; padding with 0, i.e. black, in pixel units). Flip: each example is mirrored
    left-right with probability 1/2. The offsets (2·B integers) and then the flips (B uniforms) are
    drawn on the CPU from ``generator``; the indexing runs on ``x``'s device.
    """
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    if crop_padding == 0 and not flip:
        return x
    b, c, h, w = x.shape
    device = x.device
    if crop_padding:
        p = crop_padding
        offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator)  # (2, B): row, column
        rows = (offsets[0][:, None] + torch.arange(h)).to(device)  # (B, H)
        cols = (offsets[1][:, None] + torch.arange(w)).to(device)  # (B, W)
        padded = F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
        x = padded[
            torch.arange(b, device=device)[:, None, None, None],
            torch.arange(c, device=device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]  # (B, C, H, W)
    if flip:
        mirrored = torch.rand(b, generator=generator) < 0.5  # (B,)
        x = torch.where(mirrored.to(device)[:, None, None, None], x.flip(3), x)
    return x
