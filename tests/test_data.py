"""Tests of rnas.data: the [0, 1] float contract, deterministic splits, batch iteration and the
torchvision readers on small files written in each dataset's official on-disk format."""

from __future__ import annotations

import os
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rnas.data import (
    DATASETS,
    DatasetNotFoundError,
    TensorPair,
    UnknownDatasetError,
    digits_arrays,
    iterate_batches,
    load_splits,
    split_half,
)

TORCHVISION_SETS = ["mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"]


def _row_counter(*tensors: torch.Tensor) -> Counter:
    """Multiset of examples (rows as bytes): equal counters <=> the same examples."""
    counter: Counter = Counter()
    for t in tensors:
        flat = t.reshape(t.shape[0], -1).contiguous().numpy()
        counter.update(row.tobytes() for row in flat)
    return counter


def _check_contract(pair: TensorPair, channels: int, size: int) -> None:
    assert pair.x.dtype == torch.float32
    assert pair.y.dtype == torch.int64
    assert pair.x.ndim == 4 and pair.x.shape[1:] == (channels, size, size)
    assert pair.y.shape == (len(pair),)
    if len(pair):
        assert float(pair.x.min()) >= 0.0 and float(pair.x.max()) <= 1.0


def _ids(n: int) -> TensorPair:
    """A pair whose example i is the constant image i (ids recoverable from x and from y)."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return TensorPair(x, torch.arange(n, dtype=torch.int64))


# ------------------------------------------------------------------------------------ digits


def test_registry_entries() -> None:
    assert set(DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"}
    assert DATASETS["cifar10"].default_epsilon == pytest.approx(8 / 255)
    assert DATASETS["mnist"].default_epsilon == pytest.approx(0.3)
    assert DATASETS["cifar100"].num_classes == 100
    assert DATASETS["svhn"].input_channels == 3 and DATASETS["digits"].input_channels == 1


def test_digits_file_reader_equals_sklearn_load_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct read of scikit-learn's digits.csv.gz gives load_digits' arrays; where the file
    is not found it falls back to load_digits itself."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, target = digits_arrays()
    assert images.shape == (1797, 8, 8) and target.dtype == np.int64
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(target, bunch.target)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    images2, target2 = digits_arrays()
    np.testing.assert_array_equal(images2, bunch.images)
    np.testing.assert_array_equal(target2, bunch.target)


def test_digits_shapes_dtypes_range_and_partition() -> None:
    from sklearn.datasets import load_digits

    splits = load_splits("digits", seed=0, image_size=16)
    for pair in (splits.train, splits.val, splits.test):
        _check_contract(pair, channels=1, size=16)
    assert splits.info.image_size == 16 and splits.info.num_classes == 10
    n = len(load_digits().target)
    assert len(splits.test) == round(0.2 * n)
    assert len(splits.val) == round(0.1 * (n - len(splits.test)))
    assert len(splits.train) + len(splits.val) + len(splits.test) == n
    assert set(splits.train.y.tolist()) == set(range(10))

    # The three splits are a partition of the dataset: together they are exactly its examples
    # (compared as multisets, so a duplicate image cannot hide an overlap).
    raw = load_splits("digits", seed=0, image_size=8)
    images = torch.as_tensor(load_digits().images, dtype=torch.float32).div(16).unsqueeze(1)
    assert _row_counter(raw.train.x, raw.val.x, raw.test.x) == _row_counter(images)


def test_digits_native_size_is_exact_and_upsampling_is_bilinear() -> None:
    raw = load_splits("digits", image_size=8)
    assert torch.equal(raw.train.x * 16, (raw.train.x * 16).round())  # values k/16
    up = load_splits("digits", image_size=32)
    expected = torch.nn.functional.interpolate(raw.test.x, size=(32, 32), mode="bilinear", align_corners=False).clamp(
        0, 1
    )
    assert torch.allclose(up.test.x, expected)
    assert up.info.image_size == 32


def test_digits_splits_deterministic_per_seed_and_test_fixed() -> None:
    a = load_splits("digits", seed=0)
    b = load_splits("digits", seed=0)
    c = load_splits("digits", seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        assert torch.equal(getattr(a, split).y, getattr(b, split).y)
    assert torch.equal(a.test.x, c.test.x) and torch.equal(a.test.y, c.test.y)
    assert not torch.equal(a.val.x, c.val.x)
    # Same training pool, different split of it.
    assert _row_counter(a.train.x, a.val.x) == _row_counter(c.train.x, c.val.x)


def test_digits_train_subset_and_fractions() -> None:
    splits = load_splits("digits", seed=3, train_subset=100, val_fraction=0.2)
    assert len(splits.train) == 80 and len(splits.val) == 20
    full = load_splits("digits", seed=3, val_fraction=0.0)
    assert len(full.val) == 0 and full.val.x.shape[1:] == (1, 16, 16)
    with pytest.raises(ValueError, match="val_fraction"):
        load_splits("digits", val_fraction=1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        load_splits("digits", test_fraction=0.0)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(UnknownDatasetError, match="cifar10") as info:
        load_splits("imagenet")
    assert isinstance(info.value, ValueError)
    assert "digits" in str(info.value)


# ------------------------------------------------------------------- batches and halves


def test_iterate_batches_covers_every_example_once() -> None:
    pair = _ids(23)
    seen = [y for _, y in iterate_batches(pair, batch_size=5, shuffle=False)]
    assert [len(y) for y in seen] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat(seen), torch.arange(23))

    batches = list(iterate_batches(pair, 5, shuffle=True, generator=torch.Generator().manual_seed(0)))
    ys = torch.cat([y for _, y in batches])
    assert sorted(ys.tolist()) == list(range(23)) and not torch.equal(ys, torch.arange(23))
    for x, y in batches:  # x and y stay aligned
        assert torch.equal(x[:, 0, 0, 0].long(), y)

    again = torch.cat(
        [y for _, y in iterate_batches(pair, 5, shuffle=True, generator=torch.Generator().manual_seed(0))]
    )
    assert torch.equal(ys, again)

    dropped = list(iterate_batches(pair, 5, shuffle=True, generator=torch.Generator(), drop_last=True))
    assert [len(y) for _, y in dropped] == [5, 5, 5, 5]
    with pytest.raises(ValueError):
        next(iterate_batches(pair, 0, shuffle=False))


def test_split_half_disjoint_and_deterministic() -> None:
    pair = _ids(11)
    a, b = split_half(pair, seed=0)
    assert len(a) == 5 and len(b) == 6
    assert set(a.y.tolist()).isdisjoint(b.y.tolist())
    assert set(a.y.tolist()) | set(b.y.tolist()) == set(range(11))
    a2, b2 = split_half(pair, seed=0)
    assert torch.equal(a.y, a2.y) and torch.equal(b.y, b2.y)
    a3, _ = split_half(pair, seed=1)
    assert not torch.equal(a.y, a3.y)


# ------------------------------------------------------------- torchvision on-disk formats


def _images(n: int, c: int, h: int, w: int, offset: int) -> np.ndarray:
    """uint8 (n, c, h, w) images, distinct per example, covering 0 and 255."""
    rng = np.random.default_rng(offset)
    x = rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(offset, offset + n, dtype=np.uint8)  # unique tag per example
    x[0, 0, 1, 1], x[0, 0, 1, 2] = 0, 255
    return x


def _labels(n: int, num_classes: int, offset: int) -> np.ndarray:
    return ((np.arange(n) + offset) % num_classes).astype(np.int64)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (LeCun) file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian int32 dims."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">i", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist_like(root: Path, folder: str, train: tuple, test: tuple) -> None:
    raw = root / folder / "raw"
    for prefix, (x, y) in (("train", train), ("t10k", test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)


def _write_cifar(root: Path, hundred: bool, train: tuple, test: tuple) -> None:
    def rows(x: np.ndarray) -> np.ndarray:  # (n, 3, 32, 32) -> (n, 3072): R plane, G, B
        return x.reshape(len(x), -1)

    if hundred:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        files = {"train": [(train[0], train[1])], "test": [(test[0], test[1])]}
        meta_name, meta = "meta", {"fine_label_names": [f"c{i}" for i in range(100)]}
    else:
        folder, label_key = root / "cifar-10-batches-py", "labels"
        chunks = np.array_split(np.arange(len(train[1])), 5)
        files = {f"data_batch_{i + 1}": [(train[0][c], train[1][c])] for i, c in enumerate(chunks)}
        files["test_batch"] = [(test[0], test[1])]
        meta_name, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    folder.mkdir(parents=True)
    for name, [(x, y)] in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows(x), label_key: y.tolist()}, f)
    with open(folder / meta_name, "wb") as f:
        pickle.dump(meta, f)


def _write_svhn(root: Path, train: tuple, test: tuple) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in (("train_32x32.mat", train), ("test_32x32.mat", test)):
        labels = np.where(y == 0, 10, y).reshape(-1, 1)  # SVHN stores digit 0 as label 10
        savemat(root / name, {"X": np.transpose(x, (2, 3, 1, 0)), "y": labels})  # (32, 32, 3, n)


def _existence_only(fpath: str | os.PathLike, md5: str | None = None) -> bool:
    return os.path.isfile(fpath)


@pytest.fixture
def skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """The small files cannot match the official md5 sums: keep torchvision's existence check
    and drop only the checksum comparison of the CIFAR and SVHN readers."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn

    monkeypatch.setattr(cifar, "check_integrity", _existence_only)
    monkeypatch.setattr(svhn, "check_integrity", _existence_only)


def _write(name: str, root: Path, n_train: int, n_test: int) -> tuple[tuple, tuple]:
    info = DATASETS[name]
    c, s, k = info.input_channels, info.image_size, info.num_classes
    train = (_images(n_train, c, s, s, 0), _labels(n_train, k, 0))
    test = (_images(n_test, c, s, s, 100), _labels(n_test, k, 3))
    if name == "mnist":
        _write_mnist_like(root, "MNIST", train, test)
    elif name == "fashion_mnist":
        _write_mnist_like(root, "FashionMNIST", train, test)
    elif name in ("cifar10", "cifar100"):
        _write_cifar(root, name == "cifar100", train, test)
    else:
        _write_svhn(root, train, test)
    return train, test


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_torchvision_sets_from_official_file_layout(name: str, tmp_path: Path, skip_md5: None) -> None:
    train, test = _write(name, tmp_path, n_train=20, n_test=7)
    info = DATASETS[name]
    splits = load_splits(name, root=tmp_path, seed=0, val_fraction=0.25)
    for pair in (splits.train, splits.val, splits.test):
        _check_contract(pair, info.input_channels, info.image_size)
    assert splits.info.image_size == info.image_size
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 7)

    # Test split: the official one, in order, pixel for pixel (orientation included), x / 255.
    assert torch.equal(splits.test.x, torch.from_numpy(test[0]).float() / 255)
    assert torch.equal(splits.test.y, torch.from_numpy(test[1]))
    # Train + val: exactly the training examples, each with its own label.
    expected_x = torch.from_numpy(train[0]).float() / 255
    assert _row_counter(splits.train.x, splits.val.x) == _row_counter(expected_x)
    for pair in (splits.train, splits.val):
        tags = (pair.x[:, 0, 0, 0] * 255).round().long()  # example index, see _images
        assert torch.equal(pair.y, torch.from_numpy(train[1])[tags])

    subset = load_splits(name, root=tmp_path, seed=0, val_fraction=0.25, train_subset=8)
    assert (len(subset.train), len(subset.val), len(subset.test)) == (6, 2, 7)
    other = load_splits(name, root=tmp_path, seed=1, val_fraction=0.25)
    assert not torch.equal(other.val.y, splits.val.y) or not torch.equal(other.val.x, splits.val.x)


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_missing_dataset_is_one_clear_line(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits(name, root=tmp_path / "nowhere")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in message
    assert repr(name) in message
    assert str((tmp_path / "nowhere").resolve()) in message
    assert "data.download" in message


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_checksum_mismatch_is_reported_as_not_found(name: str, tmp_path: Path) -> None:
    _write(name, tmp_path, n_train=5, n_test=2)  # real torchvision md5 check, files are fakes
    with pytest.raises(DatasetNotFoundError, match="data.download"):
        load_splits(name, root=tmp_path)


def test_relative_root_is_reported_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits("mnist", root="data")
    assert f"under {tmp_path.resolve() / 'data'} " in str(info.value)


def test_unreadable_files_are_not_reported_as_missing(tmp_path: Path) -> None:
    """Only torchvision's missing/corrupt-files errors become DatasetNotFoundError."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (raw / f"{stem}-ubyte").write_bytes(b"\xff" * 16)  # present, but not IDX
    with pytest.raises(Exception) as info:
        load_splits("mnist", root=tmp_path)
    assert not isinstance(info.value, DatasetNotFoundError)
