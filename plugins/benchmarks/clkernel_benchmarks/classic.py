"""The classic continual-learning benchmarks, with the literature's default experience counts.

Common options: ``dataset_root`` (default ``$CLKERNEL_DATA``, else a per-user cache folder), ``download``
(fetch missing files with torchvision), ``seed`` (class order, permutations, angles), ``fixed_class_order``,
``return_task_id`` (experience ``i`` gets task label ``i``), ``train_transform`` / ``eval_transform``. A
:class:`~clkernel_benchmarks.DatasetNotFoundError` says where the files were looked for when they are missing
and may not (``download=False``) or could not be downloaded.

In-memory benchmarks (MNIST family, CIFAR, digits) hold the whole dataset as one uint8 tensor; conversion to
float and normalisation happen per minibatch in one batched call. Their ``device`` option (``clkernel run``
fills it with the run's device) moves that tensor there once: minibatches are then gathered, converted and
augmented on the device, and replay buffers drawn from them stay there too. A ``train_transform`` /
``eval_transform`` you give runs after that conversion, on the normalised float minibatch ``(B, C, H, W)``, and
replaces the default augmentation (random crop and flip for CIFAR; none for the others). File-backed benchmarks
(Tiny ImageNet, CORe50, ``image-folder``) read one image at a time; there your transforms run on each
normalised image ``(C, H, W)``, in the training loop's DataLoader workers when it has some.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from clkernel import CLDataset
from clkernel_benchmarks.datasets import (CORE50_TEST_SESSIONS, load_cifar, load_core50, load_digits,
                                          load_mnist_family, load_tinyimagenet, resolve_root)
from clkernel_benchmarks.generators import nc_benchmark, ni_benchmark, permuted_benchmark, rotated_benchmark
from clkernel_benchmarks.scenario import ScenarioBenchmark
from clkernel_benchmarks.transforms import Normalize, RandomCropFlip, chain

__all__ = ["ImageReader", "core50", "image_folder", "permuted_mnist", "rotated_mnist", "split_cifar10", "split_cifar100",
           "split_digits", "split_fmnist", "split_mnist", "split_tinyimagenet"]

Transform = Callable[[Any], Any]
Stats = tuple[Sequence[float], Sequence[float]]

MNIST_STATS: Stats = ((0.1307,), (0.3081,))
FMNIST_STATS: Stats = ((0.2860,), (0.3530,))
CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
TINYIMAGENET_STATS: Stats = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: Mean and std of the embedded digits' training pixels, scaled to 0..1 (they range over 0..16).
DIGITS_STATS: Stats = ((0.3051,), (0.3762,))


def _tensor_datasets(data: Sequence[torch.Tensor], stats: Stats, train_transform: Transform | None,
                     eval_transform: Transform | None, augment: Transform | None = None, scale: float = 255.0,
                     device: str | torch.device | None = None) -> tuple[CLDataset, CLDataset]:
    """In-memory train and test datasets whose batched transforms convert, normalise and augment; their pixels
    moved to ``device`` once (before any split, so every view shares that copy)."""
    x_train, y_train, x_test, y_test = data
    if device is not None:
        x_train, x_test = x_train.to(device), x_test.to(device)
    norm = Normalize(*stats, scale=scale)
    train_tf = chain(norm, train_transform) if train_transform is not None else chain(augment, norm)
    eval_tf = chain(norm, eval_transform)
    return (CLDataset.from_tensors(x_train, y_train, transform=train_tf, eval_transform=eval_tf),
            CLDataset.from_tensors(x_test, y_test, transform=train_tf, eval_transform=eval_tf))


def _file_transforms(stats: Stats, augment: Transform | None, train_transform: Transform | None,
                     eval_transform: Transform | None) -> tuple[Transform, Transform]:
    """Per-image transforms for file-backed datasets: to a float tensor, normalise, then augment / yours."""
    from torchvision.transforms import v2

    base = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(stats[0]), list(stats[1]))]
    train_extra = train_transform if train_transform is not None else augment
    return (v2.Compose(base + ([train_extra] if train_extra is not None else [])),
            v2.Compose(base + ([eval_transform] if eval_transform is not None else [])))


def _split(name: str, train: CLDataset, test: CLDataset, n_experiences: int, seed: int | None,
           fixed_class_order: Sequence[int] | None, return_task_id: bool, class_ids_from_zero_in_each_exp: bool,
           **info: Any) -> ScenarioBenchmark:
    bm = nc_benchmark(train, test, n_experiences, seed=seed, fixed_class_order=fixed_class_order,
                      return_task_id=return_task_id, class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                      name=name)
    bm.info.update(info)
    return bm


def split_mnist(
    *,
    n_experiences: int = 5,
    dataset_root: str | None = None,
    download: bool = True,
    seed: int | None = 0,
    fixed_class_order: list[int] | None = None,
    return_task_id: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    device: str | None = None,
) -> ScenarioBenchmark:
    """MNIST digits split by class: 5 experiences of 2 classes (60,000 train / 10,000 test, 1x28x28).

    The class order is shuffled with ``seed`` unless ``fixed_class_order`` gives it. Held in memory and served
    through the kernel's batched path. ``class_ids_from_zero_in_each_exp`` relabels each experience's classes
    0..k-1 (with ``return_task_id``: the multi-head task-incremental setting).
    """
    root = resolve_root(dataset_root)
    data = load_mnist_family("MNIST", root, download, "split-mnist")
    train, test = _tensor_datasets(data, MNIST_STATS, train_transform, eval_transform, device=device)
    return _split("split-mnist", train, test, n_experiences, seed, fixed_class_order, return_task_id,
                  class_ids_from_zero_in_each_exp, dataset="MNIST", dataset_root=str(root))


def split_fmnist(
    *,
    n_experiences: int = 5,
    dataset_root: str | None = None,
    download: bool = True,
    seed: int | None = 0,
    fixed_class_order: list[int] | None = None,
    return_task_id: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    device: str | None = None,
) -> ScenarioBenchmark:
    """Fashion-MNIST split by class: 5 experiences of 2 classes (60,000 train / 10,000 test, 1x28x28).

    Same options as split-mnist.
    """
    root = resolve_root(dataset_root)
    data = load_mnist_family("FashionMNIST", root, download, "split-fmnist")
    train, test = _tensor_datasets(data, FMNIST_STATS, train_transform, eval_transform, device=device)
    return _split("split-fmnist", train, test, n_experiences, seed, fixed_class_order, return_task_id,
                  class_ids_from_zero_in_each_exp, dataset="FashionMNIST", dataset_root=str(root))


def permuted_mnist(
    *,
    n_experiences: int = 10,
    dataset_root: str | None = None,
    download: bool = True,
    seed: int | None = 0,
    return_task_id: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    device: str | None = None,
) -> ScenarioBenchmark:
    """MNIST under a fixed random pixel permutation per experience: 10 experiences of all 10 classes.

    Permutations are drawn from ``seed``; each is one gather per minibatch on the stored pixels.
    ``exp.info["permutation"]`` holds it.
    """
    root = resolve_root(dataset_root)
    data = load_mnist_family("MNIST", root, download, "permuted-mnist")
    train, test = _tensor_datasets(data, MNIST_STATS, train_transform, eval_transform, device=device)
    bm = permuted_benchmark(train, test, n_experiences, seed=seed, return_task_id=return_task_id,
                            name="permuted-mnist")
    bm.info.update(dataset="MNIST", dataset_root=str(root))
    return bm


def rotated_mnist(
    *,
    n_experiences: int = 10,
    rotations: list[float] | None = None,
    dataset_root: str | None = None,
    download: bool = True,
    seed: int | None = 0,
    return_task_id: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    device: str | None = None,
) -> ScenarioBenchmark:
    """MNIST rotated by one angle per experience: 10 experiences of all 10 classes.

    ``rotations`` gives the angles in degrees; by default whole degrees drawn in [-180, 180] with ``seed``.
    Each rotation is one gather per minibatch (nearest pixel, as torchvision's rotate).
    """
    root = resolve_root(dataset_root)
    data = load_mnist_family("MNIST", root, download, "rotated-mnist")
    train, test = _tensor_datasets(data, MNIST_STATS, train_transform, eval_transform, device=device)
    if rotations is not None and n_experiences not in (10, len(rotations)):
        raise ValueError(f"rotated-mnist: rotations lists {len(rotations)} angles but n_experiences={n_experiences}")
    bm = rotated_benchmark(train, test, None if rotations is not None else n_experiences, rotations=rotations,
                           seed=seed, return_task_id=return_task_id, name="rotated-mnist")
    bm.info.update(dataset="MNIST", dataset_root=str(root))
    return bm


def split_cifar10(
    *,
    n_experiences: int = 5,
    dataset_root: str | None = None,
    download: bool = True,
    seed: int | None = 0,
    fixed_class_order: list[int] | None = None,
    return_task_id: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    device: str | None = None,
) -> ScenarioBenchmark:
    """CIFAR-10 split by class: 5 experiences of 2 classes (50,000 train / 10,000 test, 3x32x32).

    Training minibatches get the usual random crop (padding 4) and horizontal flip, batched, unless
    ``train_transform`` replaces them.
    """
    root = resolve_root(dataset_root)
    data = load_cifar("CIFAR10", root, download, "split-cifar10")
    train, test = _tensor_datasets(data, CIFAR10_STATS, train_transform, eval_transform, augment=RandomCropFlip(4),
                                   device=device)
    return _split("split-cifar10", train, test, n_experiences, seed, fixed_class_order, return_task_id,
                  class_ids_from_zero_in_each_exp, dataset="CIFAR10", dataset_root=str(root))


def split_cifar100(
    *,
    n_experiences: int = 10,
    dataset_root: str | None = None,
    download: bool = True,
    seed: int | None = 0,
    fixed_class_order: list[int] | None = None,
    return_task_id: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    device: str | None = None,
) -> ScenarioBenchmark:
    """CIFAR-100 split by class: 10 experiences of 10 classes (50,000 train / 10,000 test, 3x32x32).

    Same augmentation and options as split-cifar10.
    """
    root = resolve_root(dataset_root)
    data = load_cifar("CIFAR100", root, download, "split-cifar100")
    train, test = _tensor_datasets(data, CIFAR100_STATS, train_transform, eval_transform,
                                   augment=RandomCropFlip(4), device=device)
    return _split("split-cifar100", train, test, n_experiences, seed, fixed_class_order, return_task_id,
                  class_ids_from_zero_in_each_exp, dataset="CIFAR100", dataset_root=str(root))


def split_tinyimagenet(
    *,
    n_experiences: int = 10,
    dataset_root: str | None = None,
    download: bool = True,
    seed: int | None = 0,
    fixed_class_order: list[int] | None = None,
    return_task_id: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> ScenarioBenchmark:
    """Tiny ImageNet split by class: 10 experiences of 20 classes (100,000 train / 10,000 val, 3x64x64).

    Read from ``tiny-imagenet-200/`` one image at a time (file-backed); the official validation set is the test
    stream. Training images are flipped at random unless ``train_transform`` replaces that.
    """
    from torchvision.transforms import v2

    root = resolve_root(dataset_root)
    train_files, val_files = load_tinyimagenet(root, download, "split-tinyimagenet")
    train_tf, eval_tf = _file_transforms(TINYIMAGENET_STATS, v2.RandomHorizontalFlip(), train_transform,
                                         eval_transform)
    train = CLDataset.from_dataset(train_files, transform=train_tf, eval_transform=eval_tf)
    test = CLDataset.from_dataset(val_files, transform=train_tf, eval_transform=eval_tf)
    return _split("split-tinyimagenet", train, test, n_experiences, seed, fixed_class_order, return_task_id,
                  class_ids_from_zero_in_each_exp, dataset="TinyImageNet", dataset_root=str(root))


def core50(
    *,
    scenario: str = "ni",
    object_level: bool = True,
    mini: bool = False,
    n_experiences: int | None = None,
    dataset_root: str | None = None,
    download: bool = True,
    seed: int | None = 0,
    fixed_class_order: list[int] | None = None,
    return_task_id: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> ScenarioBenchmark:
    """CORe50 objects: ``ni`` (one experience per training session) or ``nc`` (new objects) scenario.

    Sessions 3, 7 and 10 form the test stream; the 8 others the training data. ``ni``: 8 experiences, one per
    session, in an order drawn from ``seed``. ``nc``: 9 experiences (10 objects, then 5 per experience), or 5
    of 2 categories with ``object_level=False``; ``n_experiences`` overrides (classes then split evenly).
    ``object_level``: 50 objects as classes, else their 10 categories. ``mini``: the 32x32 version.
    File-backed: images are read one at a time.
    """
    from torchvision.transforms import v2

    if scenario not in ("ni", "nc"):
        raise ValueError(f"core50: scenario must be 'ni' or 'nc', got {scenario!r}")
    if scenario == "ni" and (fixed_class_order is not None or return_task_id):
        raise ValueError("core50: fixed_class_order and return_task_id apply to scenario='nc' only")
    root = resolve_root(dataset_root)
    sessions = load_core50(root, download, "core50", mini=mini)
    train_tf, eval_tf = _file_transforms(IMAGENET_STATS, v2.RandomHorizontalFlip(), train_transform,
                                         eval_transform)
    parts: dict[bool, list[CLDataset]] = {True: [], False: []}
    for session, folder, objects in sessions:
        labels = torch.tensor(objects) if object_level else torch.tensor(objects) // 5
        parts[session in CORE50_TEST_SESSIONS].append(
            CLDataset.from_dataset(folder, targets=labels, transform=train_tf, eval_transform=eval_tf,
                                   session=session))
    train = parts[False][0].concat(*parts[False][1:])
    test = parts[True][0].concat(*parts[True][1:])
    info = {"dataset": "CORe50", "dataset_root": str(root), "object_level": object_level, "mini": mini}
    if scenario == "ni":
        train_sessions = train.session.unique()
        if n_experiences is not None and n_experiences != len(train_sessions):
            raise ValueError(f"core50 ni: n_experiences={n_experiences}, but there is one experience per training "
                             f"session ({len(train_sessions)})")
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        order = train_sessions[torch.randperm(len(train_sessions), generator=g)]
        assignment = [(train.session == s).nonzero().flatten() for s in order]
        bm = ni_benchmark(train, test, fixed_exp_assignment=assignment, name="core50")
        info["sessions_order"] = order.tolist()
    else:
        n_classes = len(train.classes)
        per_exp = None
        if n_experiences is None:
            n_experiences, per_exp = (9, {0: 10}) if object_level else (5, None)
        bm = nc_benchmark(train, test, n_experiences, per_exp_classes=per_exp, seed=seed,
                          fixed_class_order=fixed_class_order, return_task_id=return_task_id, name="core50")
        info["n_classes"] = n_classes
    bm.info.update(info)
    return bm


def split_digits(
    *,
    n_experiences: int = 5,
    seed: int | None = 0,
    fixed_class_order: list[int] | None = None,
    return_task_id: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    device: str | None = None,
) -> ScenarioBenchmark:
    """UCI 8x8 handwritten digits, shipped with the package: 5 experiences of 2 classes, no download.

    1,797 images (CC BY 4.0, Alpaydin & Kaynak 1998) in a fixed stratified split: 1,442 train, 355 test,
    shape 1x8x8. Small enough to train in seconds on a CPU: the default benchmark of ``clkernel run``.
    """
    train, test = _tensor_datasets(load_digits(), DIGITS_STATS, train_transform, eval_transform, scale=16.0,
                                   device=device)
    return _split("split-digits", train, test, n_experiences, seed, fixed_class_order, return_task_id,
                  class_ids_from_zero_in_each_exp, dataset="UCI digits (embedded)")


class ImageReader:
    """Reads an image file as torchvision's ``default_loader`` does (a PIL image, RGB), naming the file when it
    cannot be read; with :attr:`size` set, also refusing an image of another size, whose minibatch could not
    be stacked (the image-folder benchmark sets it to the first image's size when no ``image_size`` resizes).

    :raises OSError: for a file PIL cannot read (corrupt, truncated, not an image).
    :raises ValueError: for an image whose size is not :attr:`size`.
    """

    def __init__(self, size: tuple[int, int] | None = None) -> None:
        #: ``(width, height)`` in pixels every image must have, or None for any.
        self.size = size

    def __call__(self, path: str) -> Any:
        from PIL import Image

        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise OSError(f"image-folder: cannot read {path}: {e}") from None
        if self.size is not None and image.size != self.size:
            raise ValueError(f"image-folder: {path} is {image.size[0]}x{image.size[1]} pixels where the first image "
                             f"is {self.size[0]}x{self.size[1]}; give image_size=N to resize every image to NxN")
        return image


def image_folder(
    *,
    dataset_root: str | None = None,
    n_experiences: int = 5,
    test_size: float | None = None,
    seed: int | None = 0,
    fixed_class_order: list[int] | None = None,
    return_task_id: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    image_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> ScenarioBenchmark:
    """Any folder of images, one sub-folder per class, split by class into ``n_experiences`` experiences.

    Layout: ``dataset_root/train/<class>/*`` and ``dataset_root/test/<class>/*`` (the same class folders in
    both), or ``dataset_root/<class>/*``, of which a ``test_size`` fraction of each class (default 0.2, drawn
    with ``seed``) is the test set; ``clkernel run --data-root DIR`` gives ``dataset_root``. Images are read
    by ``torchvision.datasets.ImageFolder`` (any format PIL reads, as RGB) one at a time; class ids follow the
    sorted folder names, which ``bm.info["class_names"]`` lists. Each image becomes a float32 tensor
    ``(3, H, W)`` in ``[0, 1]``, resized to ``image_size x image_size`` when given (images of different sizes
    need it), normalised with ``mean`` / ``std`` (per channel) when given; then your ``train_transform`` /
    ``eval_transform``. Read in the training loop's DataLoader workers when it has some
    (``Strategy(loader_options=...)``, ``clkernel run --num-workers``).

    :raises FileNotFoundError: when ``dataset_root`` is not a folder, or holds no class folder with images.
    :raises ValueError: without ``dataset_root``; when ``train/`` and ``test/`` hold different classes; for a
        ``test_size`` given with ``train/`` / ``test/`` folders, or outside ``(0, 1)``; for ``mean`` and ``std``
        of different lengths.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    if dataset_root is None:
        raise ValueError("image-folder: dataset_root is required (clkernel run --data-root DIR): the folder holding "
                         "one folder of images per class (or train/ and test/ folders of those)")
    folder = Path(dataset_root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image-folder: dataset_root {str(dataset_root)!r} is not a folder")
    if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):  # type: ignore[arg-type]
        raise ValueError(f"image-folder: mean and std must be given together, one value per channel each; got "
                         f"mean={mean!r}, std={std!r}")
    base: list[Any] = [v2.ToImage()]
    if image_size is not None:
        base.append(v2.Resize((image_size, image_size), antialias=True))
    base.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None:
        base.append(v2.Normalize(list(mean), list(std)))  # type: ignore[arg-type]
    train_tf = v2.Compose(base + ([train_transform] if train_transform is not None else []))
    eval_tf = v2.Compose(base + ([eval_transform] if eval_transform is not None else []))

    loader = ImageReader()

    def read(path: Path) -> Any:
        try:
            files = ImageFolder(str(path), loader=loader)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"image-folder: {e}") from None
        if image_size is None and loader.size is None:  # every image must have the first one's size
            loader.size = loader(files.samples[0][0]).size
        return files

    split = (folder / "train").is_dir() and (folder / "test").is_dir()
    if not split and ((folder / "train").is_dir() or (folder / "test").is_dir()):
        has, lacks = ("train", "test") if (folder / "train").is_dir() else ("test", "train")
        raise FileNotFoundError(f"image-folder: {str(folder)!r} has a {has}/ folder but no {lacks}/ folder: give "
                                f"both, holding the same class folders, or put the class folders in the root itself "
                                f"(test_size of each class is then the test set)")
    if split:
        if test_size is not None:
            raise ValueError(f"image-folder: test_size={test_size!r} but {str(folder)!r} has train/ and test/ "
                             f"folders, which already split the data; leave test_size out")
        train_files, test_files = read(folder / "train"), read(folder / "test")
        if train_files.classes != test_files.classes:
            differ = sorted(set(train_files.classes) ^ set(test_files.classes))
            raise ValueError(f"image-folder: train/ and test/ must hold the same class folders; these are in one "
                             f"only: {', '.join(differ)}")
        classes = train_files.classes
        train = CLDataset.from_dataset(train_files, targets=train_files.targets, transform=train_tf,
                                       eval_transform=eval_tf)
        test = CLDataset.from_dataset(test_files, targets=test_files.targets, transform=train_tf,
                                      eval_transform=eval_tf)
    else:
        test_size = 0.2 if test_size is None else test_size
        if not 0 < test_size < 1:
            raise ValueError(f"image-folder: test_size must be a fraction in (0, 1), got {test_size!r}")
        files = read(folder)
        classes = files.classes
        everything = CLDataset.from_dataset(files, targets=files.targets, transform=train_tf, eval_transform=eval_tf)
        g = torch.Generator().manual_seed(seed if seed is not None else 0)
        test_idx = []
        for c in range(len(classes)):
            members = (everything.targets == c).nonzero().flatten()
            test_idx.append(members[torch.randperm(len(members), generator=g)[:int(len(members) * test_size)]])
        is_test = torch.zeros(len(everything), dtype=torch.bool)
        is_test[torch.cat(test_idx)] = True
        train, test = everything.subset((~is_test).nonzero().flatten()), everything.subset(is_test.nonzero().flatten())
    return _split("image-folder", train, test, n_experiences, seed, fixed_class_order, return_task_id,
                  class_ids_from_zero_in_each_exp, dataset="image folder", dataset_root=str(folder),
                  class_names=list(classes))
