"""Batched input transforms: whole-minibatch tensor operations for in-memory (tensor-backed) datasets.

Every transform here takes a batch ``x`` of shape ``(B, *sample_shape)`` and returns a batch, so a CLDataset
tensor source calls it once per minibatch (and on ``x[None]`` for a single item). None loops over samples.
They run on the batch's device (data moved with ``CLDataset.to`` or a benchmark's ``device`` option): their
constants are copied to a device once and kept there, so a minibatch costs no host-device copy.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from clkernel import CLDataset
from clkernel.validate import non_negative_int, positive_number

__all__ = ["ROTATION_GRID_BITS", "Chain", "Normalize", "PixelGather", "RandomCropFlip", "add_input_op", "chain",
           "input_shape", "permutation", "rotation"]

Transform = Callable[[Any], Any]


class Chain:
    """Apply transforms left to right, skipping ``None`` ones."""

    def __init__(self, *transforms: Transform | None) -> None:
        self.transforms = tuple(t for t in transforms if t is not None)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.transforms))})"


def chain(*transforms: Transform | None) -> Transform | None:
    """One transform doing ``transforms`` in order; None when there is none."""
    kept = [t for t in transforms if t is not None]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else Chain(*kept)


class Normalize:
    """Integer pixels (e.g. uint8 in ``0..scale``) to ``(x / scale - mean) / std`` in float32, per channel.

    Computed as a conversion, an in-place multiply and an in-place add (never in place on the input).
    ``mean`` and ``std`` hold one value per channel (dimension 1 of the batch) or one value for all.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float = 255.0) -> None:
        if len(mean) != len(std):
            raise ValueError(f"Normalize: mean has {len(mean)} values but std has {len(std)}")
        for i, s in enumerate(std):
            positive_number(s, f"std[{i}]", "Normalize")
        self.mean, self.std, self.scale = tuple(mean), tuple(std), scale
        mul = torch.tensor([1.0 / (s * scale) for s in std], dtype=torch.float32)
        add = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # the constants on other devices
        if len(mean) == 1:
            self._mul: float | torch.Tensor = float(mul[0])
            self._add: float | torch.Tensor = float(add[0])
        else:
            self._mul, self._add = mul[:, None, None], add[:, None, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mul, add = self._mul, self._add
        if isinstance(mul, torch.Tensor) and mul.device != x.device:
            mul, add = self._on.get(x.device) or self._on.setdefault(
                x.device, (mul.to(x.device), add.to(x.device)))  # type: ignore[union-attr]
        # never in place on x itself: for one item it is a view of the stored data
        out = torch.mul(x, mul) if x.is_floating_point() else x.to(torch.float32).mul_(mul)
        return out.add_(add)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std}, scale={self.scale})"


class PixelGather:
    """Move pixels by a fixed index map: output pixel ``p`` takes input pixel ``index[p]`` (0 where not ``valid``).

    Works on the spatial positions of samples shaped ``(C, H, W)`` or ``(H, W)`` (the same map for every channel),
    or on the features of ``(D,)`` samples. Any dtype; the result keeps it. Built by :func:`permutation` and
    :func:`rotation`.
    """

    def __init__(self, index: torch.Tensor, sample_shape: Sequence[int], valid: torch.Tensor | None = None,
                 name: str = "gather") -> None:
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.index = index.to(torch.long)
        self.valid = None if valid is None or bool(valid.all()) else valid.to(torch.bool)
        self.name = name
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}  # index map, mask per device
        if len(self.index) != _positions(self.sample_shape):
            raise ValueError(f"{name}: index map has {len(self.index)} entries, samples of shape "
                             f"{self.sample_shape} have {_positions(self.sample_shape)} positions")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"{self.name}: expected a batch of samples of shape {self.sample_shape}, got a batch "
                             f"of shape {tuple(x.shape)}")
        flat = x.flatten(-2) if len(self.sample_shape) >= 2 else x
        index, invalid = self._on.get(x.device) or self._on.setdefault(x.device, (
            self.index.to(x.device), None if self.valid is None else ~self.valid.to(x.device)))
        out = torch.gather(flat, -1, index.expand(flat.shape))  # faster than flat[..., index] for uint8
        if invalid is not None:
            out.masked_fill_(invalid, 0)
        return out.view(x.shape)

    def __repr__(self) -> str:
        return f"PixelGather({self.name}, sample_shape={self.sample_shape})"


def _positions(sample_shape: Sequence[int]) -> int:
    return sample_shape[-1] * sample_shape[-2] if len(sample_shape) >= 2 else sample_shape[0]


def permutation(sample_shape: Sequence[int], generator: torch.Generator) -> PixelGather:
    """A random fixed permutation of the pixel positions of samples of ``sample_shape`` (same for all channels)."""
    perm = torch.randperm(_positions(sample_shape), generator=generator)
    return PixelGather(perm, sample_shape, name="permutation")


#: Source coordinates of :func:`rotation` are snapped to multiples of ``2 ** -ROTATION_GRID_BITS`` pixels before
#: they are rounded to the nearest pixel.
ROTATION_GRID_BITS = 30


def _round_snapped(v: torch.Tensor) -> torch.Tensor:
    """Nearest integers of float64 ``v``, after snapping it to multiples of ``2**-ROTATION_GRID_BITS``; an exact
    half (after snapping) goes to the even neighbour. Integer arithmetic after the snap, so no float tie."""
    one = 1 << ROTATION_GRID_BITS
    q = torch.round(v * float(one)).to(torch.long)  # scaling by a power of two is exact
    n = torch.div(q, one, rounding_mode="floor")
    r = q - n * one  # in [0, one)
    up = (r > one // 2) | ((r == one // 2) & (n % 2 == 1))
    return n + up.to(torch.long)


def rotation(sample_shape: Sequence[int], degrees: float) -> PixelGather:
    """A rotation by ``degrees`` (counter-clockwise, about the centre, nearest pixel, black fill).

    Definition (the geometry of ``torchvision.transforms.v2.functional.rotate`` with nearest interpolation):
    output pixel ``(i, j)`` of an ``h x w`` image, at ``x = j - (w-1)/2``, ``y = i - (h-1)/2`` from the centre
    (``y`` downwards), takes the input pixel nearest to the source point
    ``(cos(a) x - sin(a) y + (w-1)/2, sin(a) x + cos(a) y + (h-1)/2)`` (column, row), or 0 when that pixel is
    outside the image. ``cos`` and ``sin`` are exact (0, 1, -1) for multiples of 90 degrees, so those rotations are
    ``torch.rot90`` of square images exactly.

    Ties are fixed, not left to floating point: the source coordinates are computed in float64, snapped to
    multiples of ``2**-30`` pixel (:data:`ROTATION_GRID_BITS`, far coarser than the float64 rounding error, far
    finer than a pixel), and a snapped coordinate exactly halfway between two pixels goes to the even one. So the
    index map is the same on every CPU, where torchvision's own rotation (float index arithmetic rounded on the
    exact halves that e.g. 45 degrees produces) may differ from machine to machine in such tie pixels; away from
    ties (farther than 2**-31 pixel) the two agree. One gather per minibatch.
    """
    if len(sample_shape) < 2:
        raise ValueError(f"rotation needs images shaped (C, H, W) or (H, W), got samples of shape "
                         f"{tuple(sample_shape)}")
    h, w = int(sample_shape[-2]), int(sample_shape[-1])
    turn = float(degrees) % 360.0
    exact = {0.0: (1.0, 0.0), 90.0: (0.0, 1.0), 180.0: (-1.0, 0.0), 270.0: (0.0, -1.0)}
    cos, sin = exact.get(turn) or (math.cos(math.radians(turn)), math.sin(math.radians(turn)))
    x = (torch.arange(w, dtype=torch.float64) - (w - 1) / 2)[None, :]  # half-integers: exact in float64
    y = (torch.arange(h, dtype=torch.float64) - (h - 1) / 2)[:, None]
    col = _round_snapped(cos * x - sin * y + (w - 1) / 2)
    row = _round_snapped(sin * x + cos * y + (h - 1) / 2)
    valid = ((col >= 0) & (col < w) & (row >= 0) & (row < h)).flatten()
    source = (row * w + col).flatten()
    return PixelGather(torch.where(valid, source, 0), sample_shape, valid=valid, name=f"rotation({degrees:g})")


class RandomCropFlip:
    """Random crop after zero padding and random horizontal flip, with its own parameters for every sample.

    The batched form of ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``: one pad and one gather per
    minibatch, on the batch's device. Apply it to the integer pixels (before :class:`Normalize`) so that padding
    is black. Per sample it draws, in this order: the vertical offset, the horizontal offset (each uniform in
    ``0..2 * padding``, into the padded image) and, with ``flip``, a flip with probability 1/2.

    :param padding: zero pixels added on each side before cropping back to the input size.
    :param flip: also flip each sample horizontally with probability 1/2.
    :param generator: draws the offsets and flips; it must be on the batch's device (``torch.Generator(device)``).
        Default: torch's global generator of that device (seeded by the run).
    :raises ValueError: for a negative ``padding``, a batch that is not ``(B, C, H, W)``, or a generator on
        another device than the batch.
    """

    def __init__(self, padding: int = 4, flip: bool = True, *, generator: torch.Generator | None = None) -> None:
        non_negative_int(padding, "padding", "RandomCropFlip")
        self.padding, self.flip, self.generator = padding, flip, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"RandomCropFlip expects a batch shaped (B, C, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        p, dev, g = self.padding, x.device, self.generator
        if g is not None and g.device.type != dev.type:
            raise ValueError(f"RandomCropFlip: the generator is on {g.device} but the batch on {dev}; give a "
                             f"torch.Generator({str(dev)!r})")
        padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        oy = torch.randint(0, 2 * p + 1, (b, 1), device=dev, generator=g)
        ox = torch.randint(0, 2 * p + 1, (b, 1), device=dev, generator=g)
        rows = oy + torch.arange(h, device=dev)
        cols = ox + torch.arange(w, device=dev)
        if self.flip:
            flipped = torch.rand(b, 1, device=dev, generator=g) < 0.5
            cols = torch.where(flipped, cols.flip(1), cols)
        batch = torch.arange(b, device=dev)[:, None, None, None]
        channel = torch.arange(c, device=dev)[None, :, None, None]
        return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


# --------------------------------------------------------------------------- applying an op to a CLDataset


class _OnSample:
    """Run a batched op on one sample (a tensor, or a PIL image converted to a uint8 tensor)."""

    def __init__(self, op: Transform) -> None:
        self.op = op

    def __call__(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            from torchvision.transforms.functional import pil_to_tensor

            x = pil_to_tensor(x)
        return self.op(x[None])[0]

    def __repr__(self) -> str:
        return f"OnSample({self.op!r})"


def add_input_op(dataset: CLDataset, op: Transform) -> CLDataset:
    """A view of ``dataset`` whose inputs go through the batched ``op`` in both transform groups.

    In-memory sources apply ``op`` to the stored data, before their own transforms (e.g. permute the uint8
    pixels, then convert and normalise): one call per minibatch. Other sources apply it to each sample's
    tensor (PIL images converted) after their own transforms.
    """
    return dataset.with_input_op(op, per_sample=_OnSample(op))


def input_shape(dataset: CLDataset) -> tuple[int, ...]:
    """The shape of one sample as :func:`add_input_op` hands it to an op (stored shape for in-memory data)."""
    seen: list[tuple[int, ...]] = []

    def record(batch: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(batch.shape[1:]))
        return batch

    dataset.eval().with_input_op(record, per_sample=_OnSample(record))[0]
    return seen[0]
