"""The classic MNIST-family benchmarks on the real files in <repo>/../shared/data (read-only, never written), and
the rotation of rotated-mnist against an independent exact reference (on synthetic images too, with no data)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from clkernel import iterate_minibatches
from clkernel_benchmarks import permuted_mnist, rotated_mnist, split_fmnist, split_mnist

MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _counts(stream) -> torch.Tensor:
    return sum(torch.bincount(e.dataset.targets, minlength=10) for e in stream)


def test_split_mnist_has_all_samples_in_five_experiences_of_two_classes(shared_data):
    bm = split_mnist(dataset_root=str(shared_data), download=False)
    assert bm.name == "split-mnist" and len(bm.train_stream) == len(bm.test_stream) == 5
    assert sum(len(e.dataset) for e in bm.train_stream) == 60000
    assert sum(len(e.dataset) for e in bm.test_stream) == 10000
    assert _counts(bm.train_stream).tolist() == MNIST_TRAIN and _counts(bm.test_stream).tolist() == MNIST_TEST
    assert all(len(e.classes) == 2 for e in bm.train_stream)
    assert sorted(c for e in bm.train_stream for c in e.classes) == list(range(10))
    for tr, te in zip(bm.train_stream, bm.test_stream):
        assert tr.dataset.classes == te.dataset.classes == tr.classes
        assert len(tr.dataset) == sum(MNIST_TRAIN[c] for c in tr.classes)
    assert bm.input_shape == (1, 28, 28) and bm.num_classes == 10
    exp = bm.train_stream[0]
    assert exp.dataset.is_batched
    x, y, t = next(iterate_minibatches(exp.dataset.train(), 4096, shuffle=True, generator=torch.Generator()))
    assert x.dtype == torch.float32 and x.shape == (4096, 1, 28, 28) and set(y.tolist()) <= set(exp.classes)
    # MNIST's own statistics: about zero mean, unit deviation over the whole training set
    xs = torch.cat([e.dataset.get_batch(torch.arange(0, len(e.dataset), 3))[0] for e in bm.train_stream])
    assert abs(float(xs.mean())) < 0.01 and abs(float(xs.std()) - 1) < 0.01


def test_split_mnist_class_order_follows_seed_and_fixed_order(shared_data):
    a = split_mnist(dataset_root=str(shared_data), download=False, seed=5)
    assert a.classes_order == split_mnist(dataset_root=str(shared_data), download=False, seed=5).classes_order
    assert a.classes_order != split_mnist(dataset_root=str(shared_data), download=False, seed=6).classes_order
    fixed = split_mnist(dataset_root=str(shared_data), download=False, fixed_class_order=list(range(10)),
                        return_task_id=True)
    assert fixed.classes_in_experience == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [e.task_label for e in fixed.test_stream] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="misses class"):
        split_mnist(dataset_root=str(shared_data), download=False, fixed_class_order=[0, 1, 2])


def test_permuted_mnist_experiences_have_distinct_permutations_and_identical_label_counts(shared_data):
    bm = permuted_mnist(dataset_root=str(shared_data), download=False)
    assert len(bm.train_stream) == len(bm.test_stream) == 10
    perms = [tuple(e.info["permutation"].tolist()) for e in bm.train_stream]
    assert len(set(perms)) == 10 and all(sorted(p) == list(range(784)) for p in perms)
    for stream, expected in ((bm.train_stream, MNIST_TRAIN), (bm.test_stream, MNIST_TEST)):
        for e in stream:
            assert torch.bincount(e.dataset.targets, minlength=10).tolist() == expected
    plain = split_mnist(dataset_root=str(shared_data), download=False, fixed_class_order=list(range(10)),
                        n_experiences=1).train_stream[0].dataset
    idx = torch.tensor([0, 1, 59999])
    base = plain.get_batch(idx)[0].flatten(1)
    for e in (bm.train_stream[0], bm.train_stream[9]):
        x = e.dataset.get_batch(idx)[0].flatten(1)
        assert torch.equal(x, base[:, e.info["permutation"]])


# --------------------------------------------------------------------------- rotation: an exact reference

TIE = Fraction(1, 10**12)  # a source coordinate this close to a half-pixel is an exact tie, blurred by cos/sin's floats


def _exact_cos_sin(degrees: float) -> tuple[Fraction, Fraction]:
    turn = Fraction(degrees) % 360
    if turn % 90 == 0:
        return {0: (Fraction(1), Fraction(0)), 90: (Fraction(0), Fraction(1)), 180: (Fraction(-1), Fraction(0)),
                270: (Fraction(0), Fraction(-1))}[int(turn)]
    rad = math.radians(float(turn))
    return Fraction(math.cos(rad)), Fraction(math.sin(rad))


def _nearest(u: Fraction) -> tuple[int, Fraction]:
    """The nearest integer of ``u`` (a tie goes to the even one) and the distance of ``u`` to the nearest tie."""
    k = math.floor(u)
    to_tie = abs(u - k - Fraction(1, 2))
    if to_tie < TIE:
        return (k if k % 2 == 0 else k + 1), to_tie
    return (k if u - k < Fraction(1, 2) else k + 1), to_tie


def reference_rotation(images: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``(..., H, W)`` images by ``degrees`` counter-clockwise (nearest pixel, black fill), pixel by pixel in
    exact rational arithmetic: output pixel (i, j) at (x, y) = (j - (W-1)/2, i - (H-1)/2) from the centre, y down,
    takes the input pixel nearest to (cos x - sin y + (W-1)/2, sin x + cos y + (H-1)/2) (column, row).

    :returns: the rotated images, and per output pixel the distance of its source coordinates to a rounding tie.
    """
    h, w = images.shape[-2:]
    cos, sin = _exact_cos_sin(degrees)
    out = torch.zeros_like(images)
    to_tie = torch.ones(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            x, y = j - Fraction(w - 1, 2), i - Fraction(h - 1, 2)
            col, dc = _nearest(cos * x - sin * y + Fraction(w - 1, 2))
            row, dr = _nearest(sin * x + cos * y + Fraction(h - 1, 2))
            to_tie[i, j] = float(min(dc, dr))
            if 0 <= row < h and 0 <= col < w:
                out[..., i, j] = images[..., row, col]
    return out, to_tie


def _torchvision_rotation(images: torch.Tensor, degrees: float) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    return F.rotate(images, float(degrees), interpolation=InterpolationMode.NEAREST)


def _differing_pixels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per pixel position (H, W): does any image or channel differ."""
    return (a != b).reshape(-1, *a.shape[-2:]).any(0)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 7, 5), (2, 6, 9)], ids=["28x28", "7x5", "6x9"])
def test_rotation_equals_the_exact_reference_and_torchvision_away_from_ties(shape):
    from clkernel_benchmarks.transforms import rotation

    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (3, *shape), generator=g, dtype=torch.uint8)  # no black: fill shows
    ties = 0
    for degrees in (0, 45, 90, -90, 180, 270, 450, 30, 60, 135, -33.5, 17, 12.25):
        got = rotation(shape, degrees)(images)
        want, to_tie = reference_rotation(images, degrees)
        assert torch.equal(got, want), degrees
        if shape[-1] == shape[-2] and degrees % 90 == 0:
            assert torch.equal(got, images.rot90(int(degrees // 90) % 4, dims=(-2, -1))), degrees
        # torchvision agrees except, maybe, where a source coordinate is a tie (there float noise decides)
        differ = _differing_pixels(got, _torchvision_rotation(images, degrees))
        assert bool((to_tie[differ] < 1e-9).all()), degrees
        ties += int((to_tie < 1e-9).sum())
    assert ties > 0  # the angles above do produce ties
    # a wrong angle, or the other direction, moves many pixels (one degree off: on the 28x28 images)
    for wrong in (-45, 35, 55, 135, *((44, 46) if shape[-1] == 28 else ())):
        differ = _differing_pixels(rotation(shape, wrong)(images), reference_rotation(images, 45)[0])
        assert int(differ.sum()) > 0.1 * shape[-1] * shape[-2], wrong


def test_rotated_mnist_rotates_every_experience_by_its_angle(shared_data):
    bm = rotated_mnist(dataset_root=str(shared_data), download=False, rotations=[0, 45, 90, -33.5])
    assert len(bm.train_stream) == 4 and all(len(e.dataset) == 60000 for e in bm.train_stream)
    idx = torch.arange(8)
    base = bm.train_stream[0].dataset.eval().get_batch(idx)[0]
    upright = bm.train_stream[1].dataset.with_transforms(None, None).get_batch(idx)[0]  # raw uint8, unrotated
    assert torch.equal(bm.train_stream[2].dataset.eval().get_batch(idx)[0], base.rot90(1, dims=(-2, -1)))
    for exp, degrees in ((bm.train_stream[1], 45.0), (bm.train_stream[3], -33.5)):
        want, to_tie = reference_rotation(upright, degrees)
        assert not torch.equal(want, upright)
        norm_rotated = exp.dataset.eval().get_batch(idx)[0]
        assert torch.allclose(norm_rotated, (want.float() / 255 - 0.1307) / 0.3081, atol=1e-5)
        # torchvision's rotation differs at most on pixels whose source coordinate is a rounding tie
        differ = _differing_pixels(want, _torchvision_rotation(upright, degrees))
        assert bool((to_tie[differ] < 1e-9).all()), degrees
        # a wrong angle or direction would not pass: many pixels differ
        for wrong in (-degrees, degrees + 1):
            other = (reference_rotation(upright, wrong)[0].float() / 255 - 0.1307) / 0.3081
            moved = ((norm_rotated - other).abs() > 1e-3).reshape(-1, 28, 28).any(0)
            assert int(moved.sum()) > 40, wrong


def test_split_fmnist_has_all_samples_in_five_experiences_of_two_classes(shared_data):
    bm = split_fmnist(dataset_root=str(shared_data), download=False)
    assert len(bm.train_stream) == 5
    assert _counts(bm.train_stream).tolist() == [6000] * 10 and _counts(bm.test_stream).tolist() == [1000] * 10
    assert all(len(e.dataset) == 12000 and len(e.classes) == 2 for e in bm.train_stream)
    xs = bm.train_stream[0].dataset.get_batch(torch.arange(12000))[0]
    assert xs.shape == (12000, 1, 28, 28) and abs(float(xs.mean())) < 0.5
