"""``image-folder`` on tiny PNG folders written here, the ``device`` option of in-memory benchmarks, and the
batched transforms with their own generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clkernel
from clkernel import iterate_minibatches
from clkernel.discovery import Registry
from clkernel_benchmarks import registration
from clkernel_benchmarks.transforms import RandomCropFlip

MEAN, STD = [0.5, 0.25, 0.0], [0.5, 0.25, 1.0]


@pytest.fixture(scope="module")
def reg() -> Registry:
    r = Registry()
    r.add_module(registration, "benchmarks")
    return r


def write_folder(root: Path, per_class: dict[str, int], first_value: int = 0) -> dict[int, np.ndarray]:
    """``root/<class>/<n>.png``, 4x4 RGB; image ``n`` (numbered across classes) has red ``n``, green ``2n``, blue
    a gradient. Returns ``{n: pixels (4, 4, 3)}``."""
    pixels, n = {}, first_value
    for name, count in per_class.items():
        (root / name).mkdir(parents=True)
        for _ in range(count):
            image = np.zeros((4, 4, 3), dtype=np.uint8)
            image[..., 0], image[..., 1], image[..., 2] = n, 2 * n, np.arange(16).reshape(4, 4) * 10
            Image.fromarray(image).save(root / name / f"{n:03d}.png")
            pixels[n] = image
            n += 1
    return pixels


def expected_tensor(image: np.ndarray) -> torch.Tensor:
    """(C, H, W) float, scaled to [0, 1] and normalised with MEAN / STD, computed with numpy."""
    x = image.transpose(2, 0, 1).astype(np.float64) / 255
    return torch.from_numpy((x - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]).float()


def red_values(x: torch.Tensor) -> list[int]:
    """The image numbers of a normalised batch (red channel, undone)."""
    return torch.round((x[:, 0, 0, 0] * STD[0] + MEAN[0]) * 255).long().tolist()


def test_train_and_test_folders_split_by_class_in_the_order_given(reg, tmp_path):
    train = write_folder(tmp_path / "train", {"cat": 3, "dog": 2, "eel": 4})
    test = write_folder(tmp_path / "test", {"cat": 1, "dog": 1, "eel": 2}, first_value=100)
    bm = reg.load("benchmark", "image-folder", dataset_root=str(tmp_path), n_experiences=3,
                  fixed_class_order=[2, 0, 1], mean=MEAN, std=STD)
    assert bm.info["class_names"] == ["cat", "dog", "eel"]
    assert [e.classes for e in bm.train_stream] == [[2], [0], [1]]
    assert [len(e.dataset) for e in bm.train_stream] == [4, 3, 2]
    assert [len(e.dataset) for e in bm.test_stream] == [2, 1, 1]
    x, y, _ = next(iterate_minibatches(bm.train_stream[0].dataset.eval(), 8, shuffle=False))
    assert x.shape == (4, 3, 4, 4) and y.tolist() == [2, 2, 2, 2]
    assert torch.allclose(x, torch.stack([expected_tensor(train[n]) for n in (5, 6, 7, 8)]), atol=1e-5)
    x, y, _ = next(iterate_minibatches(bm.test_stream[1].dataset.eval(), 8, shuffle=False))
    assert y.tolist() == [0] and torch.allclose(x[0], expected_tensor(test[100]), atol=1e-5)


def test_class_folders_alone_are_split_by_test_size_in_each_class(reg, tmp_path):
    write_folder(tmp_path, {"a": 5, "b": 5, "c": 10})
    bm = reg.load("benchmark", "image-folder", dataset_root=str(tmp_path), n_experiences=1, test_size=0.4, mean=MEAN,
                  std=STD, seed=3)
    train, test = bm.train_stream[0].dataset.eval(), bm.test_stream[0].dataset.eval()
    assert torch.bincount(train.targets).tolist() == [3, 3, 6] and torch.bincount(test.targets).tolist() == [2, 2, 4]
    seen_train = red_values(next(iterate_minibatches(train, 20, shuffle=False))[0])
    seen_test = red_values(next(iterate_minibatches(test, 20, shuffle=False))[0])
    assert sorted(seen_train + seen_test) == list(range(20))  # disjoint, and every image in one of them
    again = reg.load("benchmark", "image-folder", dataset_root=str(tmp_path), n_experiences=1, test_size=0.4, mean=MEAN,
                     std=STD, seed=3)
    assert red_values(next(iterate_minibatches(again.test_stream[0].dataset.eval(), 20, shuffle=False))[0]) == \
        seen_test  # the split is drawn from the seed


def test_image_size_resizes_and_training_reads_files_in_workers(reg, tmp_path):
    write_folder(tmp_path / "train", {"a": 4, "b": 4})
    write_folder(tmp_path / "test", {"a": 1, "b": 1})
    bm = reg.load("benchmark", "image-folder", dataset_root=str(tmp_path), n_experiences=2, image_size=6)
    assert bm.input_shape == (3, 6, 6)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(108, 2))
    strategy = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=3, train_epochs=2,
                              device="cpu", eval_every=-1, loader_options={"num_workers": 1,
                                                                           "persistent_workers": True})
    with strategy:
        strategy.train(bm.train_stream)
        assert strategy.state.iteration == 2 * 2 * 2  # 2 experiences, 2 epochs, 2 minibatches (3 + 1 images)


@pytest.mark.parametrize(("options", "error", "message"), [
    ({}, ValueError, "image-folder: dataset_root is required"),
    ({"dataset_root": "{tmp}/missing"}, FileNotFoundError, "image-folder: dataset_root '.*missing' is not a folder"),
    ({"dataset_root": "{tmp}", "test_size": 1.5}, ValueError,
     r"image-folder: test_size must be a fraction in \(0, 1\)"),
    ({"dataset_root": "{tmp}", "mean": [0.5]}, ValueError, "image-folder: mean and std must be given together"),
    ({"dataset_root": "{tmp}", "std": [0.0]}, ValueError, "image-folder: std must be positive numbers"),
    ({"dataset_root": "{tmp}", "image_size": 0}, ValueError, "image-folder: image_size must be a positive integer"),
])
def test_bad_image_folder_options_are_named(reg, tmp_path, options, error, message):
    write_folder(tmp_path, {"a": 2})
    options = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(error, match=message):
        reg.load("benchmark", "image-folder", **options)


def test_train_and_test_folders_must_hold_the_same_classes(reg, tmp_path):
    write_folder(tmp_path / "train", {"a": 2, "b": 2})
    write_folder(tmp_path / "test", {"a": 1, "c": 1})
    with pytest.raises(ValueError, match="same class folders; these are in one only: b, c"):
        reg.load("benchmark", "image-folder", dataset_root=str(tmp_path))
    with pytest.raises(ValueError, match="test_size=0.5 but .* has train/ and test/ folders"):
        reg.load("benchmark", "image-folder", dataset_root=str(tmp_path), test_size=0.5)


# --------------------------------------------------------------------------- device and batched transforms


def test_in_memory_benchmarks_put_their_data_on_the_device_given(reg):
    """On the ``meta`` device (no data, every machine): minibatches, transforms included, stay there."""
    bm = reg.load("benchmark", "split-digits", device="meta")
    data = bm.train_stream[1].dataset
    assert data.device.type == "meta" and data.targets.device.type == "cpu"
    x, y, t = next(iterate_minibatches(data, 16, shuffle=True))
    assert (x.device.type, y.device.type, t.device.type) == ("meta", "meta", "meta") and x.dtype == torch.float32
    buffer = data.subset(torch.arange(5))  # a replay buffer is a view of the same data
    assert buffer.get_batch(torch.tensor([4, 0]))[0].device.type == "meta"
    with pytest.raises(ValueError, match="split-digits: device must be a torch device .*got 'gpu0'"):
        reg.load("benchmark", "split-digits", device="gpu0")


def test_random_crop_flip_draws_from_its_generator_as_per_sample_crops_and_flips_would():
    from torchvision.transforms.v2 import functional as F

    x = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = RandomCropFlip(2, generator=torch.Generator().manual_seed(4))(x)
    g = torch.Generator().manual_seed(4)  # the documented draws: row offsets, column offsets, flips
    oy, ox = torch.randint(0, 5, (6, 1), generator=g), torch.randint(0, 5, (6, 1), generator=g)
    flip = torch.rand(6, 1, generator=g) < 0.5
    for i in range(6):
        crop = F.crop(torch.nn.functional.pad(x[i], (2, 2, 2, 2)), int(oy[i]), int(ox[i]), 5, 7)
        assert torch.equal(out[i], F.horizontal_flip(crop) if flip[i] else crop), i
    assert 0 < int(flip.sum()) < 6 and len(set(zip(oy.flatten().tolist(), ox.flatten().tolist()))) > 1
    with pytest.raises(ValueError, match="the generator is on cpu but the batch on meta"):
        RandomCropFlip(2, generator=torch.Generator())(x.to("meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: crops drawn by a CUDA generator")
def test_random_crop_flip_runs_on_cuda_with_a_cuda_generator():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, device="cuda")
    first = RandomCropFlip(4, generator=torch.Generator("cuda").manual_seed(1))(x)
    again = RandomCropFlip(4, generator=torch.Generator("cuda").manual_seed(1))(x)
    assert first.is_cuda and torch.equal(first, again)


def test_a_resumed_run_reads_its_images_from_the_data_root_of_this_machine(tmp_path, monkeypatch, capsys):
    """``--data-root`` gives image-folder its folder; a resumed run keeps it while it exists, and takes another
    ``--data-root`` when the images moved (the folder belongs to the machine, not to the run)."""
    from clkernel.testing import cli_in_process

    write_folder(tmp_path / "images", {"cat": 4, "dog": 4, "eel": 4, "fox": 4})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLKERNEL_DATA", raising=False)
    run = ("run", "--benchmark", "image-folder:n_experiences=2,test_size=0.5", "--model", "simple-mlp",
           "--epochs", "1", "--mb-size", "4", "--logger", "jsonl")
    with cli_in_process() as main:
        assert main(*run, "--data-root", "images", "--output", "run") == 0, capsys.readouterr().err
        assert main("run", "--resume", "run") == 0, capsys.readouterr().err  # the saved folder, still there
        (tmp_path / "images").rename(tmp_path / "moved")
        assert main("run", "--resume", "run") == 2
        assert "image-folder: dataset_root is required (clkernel run --data-root DIR)" in capsys.readouterr().err
        assert main("run", "--resume", "run", "--data-root", "moved") == 0, capsys.readouterr().err
