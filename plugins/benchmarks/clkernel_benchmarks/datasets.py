"""Finding and reading the classic datasets: the data root, torchvision loading, clear errors when data is absent.

In-memory datasets (MNIST, Fashion-MNIST, CIFAR, the embedded digits) come back as uint8 tensors shaped
``(N, C, H, W)`` with their targets; file-backed ones (Tiny ImageNet, CORe50) as torch datasets of PIL images.
torchvision is imported inside the functions, and only where it is needed (MNIST files already unpacked are read
without it), so importing this module stays cheap.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["DATA_VARIABLE", "MNIST_FILES", "DatasetNotFoundError", "default_data_root", "load_cifar", "load_core50",
           "load_digits", "load_mnist_family", "load_tinyimagenet", "resolve_root"]

#: Environment variable naming the folder that holds (or receives) the datasets.
DATA_VARIABLE = "CLKERNEL_DATA"

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CORE50_URL = "http://bias.csr.unibo.it/maltoni/download/core50/{folder}.zip"
#: CORe50's standard test sessions; the other eight are the training sessions.
CORE50_TEST_SESSIONS = (3, 7, 10)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not where the benchmark looked and could not (or may not) be downloaded."""


def default_data_root() -> Path:
    """``$CLKERNEL_DATA`` when set, else a per-user cache folder (``~/.cache/clkernel/data`` on Linux)."""
    env = os.environ.get(DATA_VARIABLE)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "clkernel" / "data"


def resolve_root(dataset_root: str | os.PathLike[str] | None) -> Path:
    """The dataset root to use: ``dataset_root`` when given, else :func:`default_data_root`."""
    return Path(dataset_root).expanduser() if dataset_root else default_data_root()


def _not_found(benchmark: str, dataset: str, root: Path, where: Path, download: bool,
               error: BaseException | None = None) -> DatasetNotFoundError:
    from_variable = os.environ.get(DATA_VARIABLE)
    origin = f" (from ${DATA_VARIABLE})" if from_variable and Path(from_variable).expanduser().resolve() == \
        Path(root).expanduser().resolve() else ""
    fixes = (f"point the dataset root at a folder that holds {where.relative_to(root)}: the benchmark option "
             f"dataset_root=PATH, `clkernel run --data-root PATH`, or the {DATA_VARIABLE} environment variable")
    if download:
        reason = f"it is not there and downloading it failed ({type(error).__name__}: {error})" if error else \
            "it is not there and could not be downloaded"
        return DatasetNotFoundError(
            f"{benchmark}: {dataset} not found in {where} (dataset root {root}{origin}): {reason}. To fix: "
            f"connect to the internet and retry, or copy the files there yourself, or {fixes}.")
    detail = f" ({error})" if error and not str(error).startswith("Dataset not found. You can use") else ""
    return DatasetNotFoundError(
        f"{benchmark}: {dataset} not found in {where} (dataset root {root}{origin}){detail}. To fix: download it "
        f"with download=True (needs internet), or {fixes}.")


def _torchvision(cls_name: str, root: Path, train: bool, download: bool, benchmark: str, where: Path) -> Any:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    try:
        return cls(str(root), train=train, download=download)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found ..."; URLError / permissions: OSError
        raise _not_found(benchmark, cls_name, root, where, download, e) from e


#: The uncompressed IDX files of MNIST and Fashion-MNIST in ``root/<name>/raw``, where torchvision puts them, in
#: the order ``(x_train, y_train, x_test, y_test)``.
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def load_mnist_family(name: str, root: Path, download: bool, benchmark: str,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of torchvision's ``MNIST`` or ``FashionMNIST``: x uint8
    ``(N, 1, 28, 28)``, y int64 ``(N,)``.

    When the four uncompressed files (:data:`MNIST_FILES`) are in ``root/name/raw``, they are read here (the IDX
    format of LeCun et al., 1998: a big-endian header, then the bytes), without importing torchvision, whose
    import would double a process's start-up; otherwise torchvision's class finds, downloads and unpacks them.

    :raises DatasetNotFoundError: when the files are absent and cannot (or may not) be downloaded.
    :raises ValueError: for a file that is not an IDX file of unsigned bytes, or is truncated (named).
    """
    where = root / name / "raw"
    files = [where / f for f in MNIST_FILES]
    if all(f.is_file() for f in files):
        x_train, y_train, x_test, y_test = (_read_idx(f, benchmark) for f in files)
        return x_train[:, None], y_train.long(), x_test[:, None], y_test.long()
    out = []
    for train in (True, False):
        ds = _torchvision(name, root, train, download, benchmark, where)
        out += [ds.data[:, None], ds.targets.to(torch.long)]
    return tuple(out)  # type: ignore[return-value]


def _read_idx(path: Path, benchmark: str) -> torch.Tensor:
    """An IDX file of unsigned bytes as a uint8 tensor of the shape its header gives."""
    data = path.read_bytes()
    ndim = data[3] if len(data) >= 4 and data[:3] == b"\x00\x00\x08" else 0
    if not ndim:
        raise ValueError(f"{benchmark}: {path} is not an IDX file of unsigned bytes (its first bytes are "
                         f"{data[:4].hex() or 'missing'}, not 000008 and a dimension count); delete it to "
                         f"download it again")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]) if len(data) >= 4 + 4 * ndim else None
    expected = 4 + 4 * ndim + math.prod(shape) if shape else None
    if expected != len(data):
        raise ValueError(f"{benchmark}: {path} has {len(data)} bytes where its header announces "
                         f"{expected or 'a longer header'}: the file is truncated or corrupt; delete it to "
                         f"download it again")
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(shape)


def load_cifar(name: str, root: Path, download: bool, benchmark: str,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of torchvision's ``CIFAR10`` or ``CIFAR100``; x uint8 (N, 3, 32, 32)."""
    folder = {"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python"}[name]
    out = []
    for train in (True, False):
        ds = _torchvision(name, root, train, download, benchmark, root / folder)
        out += [torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets)]
    return tuple(out)  # type: ignore[return-value]


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The embedded UCI 8x8 digits: ``(x_train, y_train, x_test, y_test)``, x uint8 (N, 1, 8, 8) in 0..16.

    The split is fixed and stratified: within each class, in file order, every fifth image is a test image
    (1,442 train and 355 test images).
    """
    raw = resources.files("clkernel_benchmarks").joinpath("data", "digits.csv.gz").read_bytes()
    rows = [[int(v) for v in line.split(",")] for line in gzip.decompress(raw).decode().splitlines() if line]
    table = torch.tensor(rows, dtype=torch.long)
    x, y = table[:, :64].to(torch.uint8).reshape(-1, 1, 8, 8), table[:, 64]
    rank = torch.empty_like(y)
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten()
        rank[idx] = torch.arange(len(idx))
    test = rank % 5 == 4
    return x[~test], y[~test], x[test], y[test]


class ImageFiles(Dataset):
    """Images read from files with torchvision's default loader: items are ``(PIL image, target)``."""

    def __init__(self, paths: list[Path], targets: list[int]) -> None:
        from torchvision.datasets.folder import default_loader

        self.paths, self.targets, self.loader = list(paths), list(targets), default_loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.loader(str(self.paths[i])), self.targets[i]


def _download(url: str, root: Path, benchmark: str, dataset: str, where: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(url, download_root=str(root))
    except Exception as e:  # noqa: BLE001 - any network or archive failure becomes one clear error
        raise _not_found(benchmark, dataset, root, where, True, e) from e


def load_tinyimagenet(root: Path, download: bool, benchmark: str) -> tuple[Dataset, Dataset]:
    """Tiny ImageNet 200 in its own layout (``tiny-imagenet-200/{wnids.txt,train/<wnid>/images,val/...}``).

    Returns ``(train, val)`` datasets of PIL images; classes are the sorted wnids (0..199). The official
    validation set (labels in ``val/val_annotations.txt``) is the test set.
    """
    from torchvision.datasets import ImageFolder

    folder = root / "tiny-imagenet-200"
    needed = [folder / "wnids.txt", folder / "train", folder / "val" / "val_annotations.txt"]
    if not all(p.exists() for p in needed):
        if not download:
            raise _not_found(benchmark, "Tiny ImageNet", root, folder, False,
                             FileNotFoundError(f"missing {[str(p) for p in needed if not p.exists()]}"))
        _download(TINYIMAGENET_URL, root, benchmark, "Tiny ImageNet", folder)
    wnids = sorted(w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip())
    train = ImageFolder(str(folder / "train"))
    if train.classes != wnids:
        raise DatasetNotFoundError(f"{benchmark}: {folder / 'train'} has class folders {len(train.classes)} that do "
                                   f"not match the {len(wnids)} wnids of {folder / 'wnids.txt'}; the dataset is "
                                   f"incomplete: delete {folder} and download it again")
    index = {w: i for i, w in enumerate(wnids)}
    paths, targets = [], []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            if fields[1] not in index:
                raise ValueError(f"{benchmark}: {folder / 'val' / 'val_annotations.txt'} names class {fields[1]!r}, "
                                 f"which is not in wnids.txt")
            paths.append(folder / "val" / "images" / fields[0])
            targets.append(index[fields[1]])
    if not paths:
        raise DatasetNotFoundError(f"{benchmark}: {folder / 'val' / 'val_annotations.txt'} lists no image")
    return train, ImageFiles(paths, targets)


def load_core50(root: Path, download: bool, benchmark: str, mini: bool = False,
                ) -> list[tuple[int, Any, list[int]]]:
    """CORe50 in its own layout (``core50_128x128/s<session>/o<object>/C_<ss>_<oo>_<fff>.png``).

    Returns one ``(session, dataset, object_ids)`` per session folder present, sessions in order; the datasets
    are torchvision ``ImageFolder`` s (PIL images) and ``object_ids`` the object (0..49) of each of their images.
    """
    from torchvision.datasets import ImageFolder

    folder_name = "core50_32x32" if mini else "core50_128x128"
    folder = root / folder_name
    if not folder.is_dir():
        if not download:
            raise _not_found(benchmark, "CORe50", root, folder, False)
        _download(CORE50_URL.format(folder=folder_name), root, benchmark, "CORe50", folder)
    sessions = []
    for s in range(1, 12):
        path = folder / f"s{s}"
        if path.is_dir():
            ds = ImageFolder(str(path))
            objects = [int(name[1:]) - 1 for name in ds.classes]
            sessions.append((s, ds, [objects[i] for i in ds.targets]))
    if not any(s in CORE50_TEST_SESSIONS for s, _, _ in sessions) or \
            all(s in CORE50_TEST_SESSIONS for s, _, _ in sessions):
        raise DatasetNotFoundError(f"{benchmark}: {folder} needs training sessions and the test sessions "
                                   f"{list(CORE50_TEST_SESSIONS)} as folders s1..s11; found "
                                   f"{[s for s, _, _ in sessions] or 'none'}: delete it and download again")
    return sessions

