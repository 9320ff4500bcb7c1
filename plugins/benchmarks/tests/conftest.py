"""Shared fixtures: small synthetic datasets, writers of tiny files in each dataset's own format, real data."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from clkernel import CLDataset

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run this folder's tests on one torch thread, then restore the setting.

    The tensors here are small; on a loaded 2-core machine two OpenMP threads spin against each other and make
    ops such as ``unique`` or a small backward pass up to 100x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """The read-only real datasets (``<repo>/../shared/data``); skips when absent."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real datasets not found in {SHARED_DATA.resolve()}")
    return SHARED_DATA


@pytest.fixture
def toy() -> Callable[..., tuple[CLDataset, CLDataset]]:
    """``toy(n_classes, per_class, test_per_class)``: in-memory train/test CLDatasets of 1x4x4 uint8 images.

    Every sample has data attributes ``uid`` (its position in its dataset) and ``orig`` (its original class).
    """

    def make(n_classes: int = 10, per_class: int = 6, test_per_class: int = 2, *, seed: int = 0,
             ) -> tuple[CLDataset, CLDataset]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for k in (per_class, test_per_class):
            y = torch.arange(n_classes).repeat_interleave(k)
            y = y[torch.randperm(len(y), generator=g)]  # classes interleaved, as in real data
            x = torch.randint(0, 256, (len(y), 1, 4, 4), generator=g, dtype=torch.uint8)
            out.append(CLDataset.from_tensors(x, y, uid=torch.arange(len(y)), orig=y.clone()))
        return out[0], out[1]

    return make


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def write_mnist() -> Callable[..., dict[str, np.ndarray]]:
    """``write_mnist(root, folder="MNIST", n_train_per_class=3, n_test_per_class=1)``: tiny IDX files, as
    torchvision downloads them (``root/<folder>/raw/*-idx?-ubyte`` and their .gz). Returns the arrays written."""

    def write(root: Path, folder: str = "MNIST", n_train_per_class: int = 3, n_test_per_class: int = 1,
              ) -> dict[str, np.ndarray]:
        raw = Path(root) / folder / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        arrays = {}
        for split, k in (("train", n_train_per_class), ("t10k", n_test_per_class)):
            labels = np.tile(np.arange(10, dtype=np.uint8), k)
            images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
            arrays[f"{split}-images"], arrays[f"{split}-labels"] = images, labels
            for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
                data = _idx_bytes(array)
                (raw / f"{split}-{kind}").write_bytes(data)
                (raw / f"{split}-{kind}.gz").write_bytes(gzip.compress(data))
        return arrays

    return write


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def write_cifar(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """``write_cifar(root, name="CIFAR10", classes=10, per_class=2)``: tiny pickled batches in CIFAR's layout.

    torchvision checks the md5 of every file, so the test points its expected md5 values at the tiny files
    (the loading code itself is torchvision's, unchanged). Returns the rows and labels written.
    """
    import torchvision.datasets as tvd

    def write(root: Path, name: str = "CIFAR10", classes: int = 10, per_class: int = 2) -> dict[str, Any]:
        cls = getattr(tvd, name)
        folder = Path(root) / cls.base_folder
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        label_key = "labels" if name == "CIFAR10" else "fine_labels"
        written: dict[str, Any] = {"train": [], "test": []}
        files = [(f, "train") for f, _ in cls.train_list] + [(f, "test") for f, _ in cls.test_list]
        for filename, split in files:
            k = per_class if split == "train" else 1
            labels = [c for c in range(classes) for _ in range(k)]
            rows = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
            with open(folder / filename, "wb") as f:
                pickle.dump({"data": rows, label_key: labels}, f)
            written[split].append((rows, labels))
        with open(folder / cls.meta["filename"], "wb") as f:
            pickle.dump({cls.meta["key"]: [f"class{c}" for c in range(classes)]}, f)
        monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[f, _md5(folder / f)] for f, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})
        return written

    return write


@pytest.fixture
def write_tinyimagenet() -> Callable[..., list[str]]:
    """``write_tinyimagenet(root, n_classes=4, per_class=2)``: tiny JPEGs in Tiny ImageNet's layout; one solid
    colour per class. Returns the wnids."""
    from PIL import Image

    def write(root: Path, n_classes: int = 4, per_class: int = 2) -> list[str]:
        folder = Path(root) / "tiny-imagenet-200"
        wnids = [f"n{1000 + c:08d}" for c in range(n_classes)]
        (folder / "val" / "images").mkdir(parents=True)
        (folder / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # file order is not class order
        annotations = []
        for c, wnid in enumerate(wnids):
            images = folder / "train" / wnid / "images"
            images.mkdir(parents=True)
            colour = (40 * c, 255 - 40 * c, 128)
            for i in range(per_class):
                Image.new("RGB", (8, 8), colour).save(images / f"{wnid}_{i}.JPEG")
            (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
            name = f"val_{c}.JPEG"
            Image.new("RGB", (8, 8), colour).save(folder / "val" / "images" / name)
            annotations.append(f"{name}\t{wnid}\t0\t0\t7\t7")
        (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
        return wnids

    return write


@pytest.fixture
def write_core50() -> Callable[..., None]:
    """``write_core50(root, sessions, objects, frames=2)``: tiny PNGs in CORe50's layout
    (``core50_128x128/s<s>/o<o>/C_<ss>_<oo>_<fff>.png``)."""
    from PIL import Image

    def write(root: Path, sessions: tuple[int, ...] = (1, 2, 3, 7), objects: tuple[int, ...] = (1, 2, 6, 11),
              frames: int = 2, folder: str = "core50_128x128") -> None:
        for s in sessions:
            for o in objects:
                path = Path(root) / folder / f"s{s}" / f"o{o}"
                path.mkdir(parents=True)
                for f in range(frames):
                    Image.new("RGB", (4, 4), (5 * o, 10 * s, f)).save(path / f"C_{s:02d}_{o:02d}_{f:03d}.png")

    return write
