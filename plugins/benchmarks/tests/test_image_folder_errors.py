"""``image-folder`` names the file it cannot use: a corrupt or truncated image, an image of another size than the
first when nothing resizes them (also when read by DataLoader workers), and a train/ folder without test/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clkernel
from clkernel.log import describe_exception


def write(root: Path, classes: int = 2, per_class: int = 3, size: int = 4) -> list[Path]:
    paths = []
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            paths.append(root / f"c{c}" / f"{i}.png")
            Image.fromarray(np.full((size, size, 3), 40 * c + i, dtype=np.uint8)).save(paths[-1])
    return paths


def read_all(bm, num_workers: int = 0) -> None:
    data = clkernel.CLDataset.concat(*(e.dataset for e in bm.train_stream))
    loader = clkernel.data.MinibatchLoader(data, {"num_workers": num_workers})
    list(loader([list(range(len(data)))]))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda path: path.write_bytes(path.read_bytes()[:40]), "cannot read {path}: "),  # truncated
    (lambda path: path.write_bytes(b"not a png at all"), "cannot read {path}: cannot identify image file"),
    (lambda path: Image.fromarray(np.zeros((6, 5, 3), dtype=np.uint8)).save(path),
     "{path} is 5x6 pixels where the first image is 4x4; give image_size=N to resize every image to NxN"),
])
def test_an_image_that_cannot_be_used_is_named_when_read(tmp_path, damage, message):
    path = write(tmp_path)[4]
    damage(path)
    bm = clkernel.load("benchmark", "image-folder", dataset_root=str(tmp_path), n_experiences=1, test_size=0.34)
    with pytest.raises((OSError, ValueError), match=f"image-folder: {message.format(path=path)}"):
        read_all(bm)


def test_read_in_a_worker_the_error_is_described_on_one_line_naming_the_file(tmp_path):
    path = write(tmp_path)[4]
    path.write_bytes(b"not a png at all")
    bm = clkernel.load("benchmark", "image-folder", dataset_root=str(tmp_path), n_experiences=1, test_size=0.34)
    with pytest.raises(OSError) as caught:
        read_all(bm, num_workers=2)
    assert "Original Traceback" in str(caught.value)  # torch puts the worker's traceback in the message
    assert describe_exception(caught.value) == (f"OSError: image-folder: cannot read {path}: cannot identify image "
                                                f"file {str(path)!r} (in DataLoader worker process 0)")


def test_image_size_lets_images_of_any_size_through(tmp_path):
    write(tmp_path)
    Image.fromarray(np.zeros((6, 5, 3), dtype=np.uint8)).save(tmp_path / "c1" / "9.png")
    bm = clkernel.load("benchmark", "image-folder", dataset_root=str(tmp_path), n_experiences=1, test_size=0.34,
                       image_size=3)
    data = clkernel.CLDataset.concat(*(e.dataset for e in bm.train_stream))
    assert data.get_batch(torch.arange(len(data)))[0].shape == (len(data), 3, 3, 3)


@pytest.mark.parametrize("only", ["train", "test"])
def test_a_train_or_test_folder_alone_is_refused(tmp_path, only):
    write(tmp_path / only)
    other = "test" if only == "train" else "train"
    with pytest.raises(FileNotFoundError, match=f"has a {only}/ folder but no {other}/ folder"):
        clkernel.load("benchmark", "image-folder", dataset_root=str(tmp_path))
