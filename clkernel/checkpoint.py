"""Checkpoints of a run: one file holds everything a killed run needs to resume bit for bit.

A checkpoint file is what ``torch.save`` writes, and ``torch.load(path, weights_only=True)`` reads it: tensors and
plain containers only, never a pickled object, so a file from an untrusted source cannot run code. It holds

``header``
    ``{"kind": "clkernel-checkpoint", "format": FORMAT_VERSION, "kernel": clkernel's version, "distributions":
    {distribution: version} of the plugins' packages, "plugins": [the strategy's plugin names, in order],
    "position": {"experience", "epoch", "iteration", "stage"}, "iteration": training iterations so far,
    "created": ISO time, "size": bytes of the payload, "sha256": its hex digest}``
``payload``
    a 1-D uint8 tensor: the ``torch.save`` bytes of ``{"state": Strategy.state_dict(), "position": ...}``. The
    checksum covers exactly these bytes, so a truncated or altered file is told apart from a valid one.

Files are written atomically (:func:`atomic_write`: a temporary file in the same folder, ``fsync``, rename, then
``fsync`` of the folder): a file named ``checkpoint-NNNNNN.pt`` is always complete, and the previous checkpoint is
removed only once the new one is. :class:`Checkpointer` is the policy the loop follows (every N iterations, every M
minutes, always at experience ends, and on request, e.g. from a signal handler).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

if TYPE_CHECKING:
    from clkernel.loop import Strategy

__all__ = ["FORMAT_VERSION", "CheckpointError", "Checkpointer", "atomic_write", "checkpoint_files",
           "latest_checkpoint", "load_checkpoint", "read_checkpoint", "restore_rng_state", "rng_state",
           "save_checkpoint"]

#: The layout of checkpoint files this kernel writes; it reads this one and older ones.
FORMAT_VERSION = 1
KIND = "clkernel-checkpoint"
STAGES = ("train", "eval", "start")
_NAME = re.compile(r"checkpoint-(\d{6,})\.pt")
_PLAIN = (str, bytes, int, float, bool, complex, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or loaded: the one-line message names the file and what is wrong
    (truncated or corrupt, not a checkpoint, a pickled object, a newer format, another plugin list, a model
    parameter of another shape...). Loading that fails this way changes nothing on disk nor in the strategy."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


# ---------------------------------------------------------------------- random number generators

def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The state of every random number generator a run draws from, as tensors and plain values: torch's CPU
    generator (``"torch"``), the CUDA ones when CUDA was initialised (``"cuda"``), numpy's global one when numpy
    is imported (``"numpy"``), Python's ``random`` (``"random"``) and ``generator`` (``"generator"``, or None)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "cuda": None, "numpy": None,
                             "random": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                                        "gauss_next": gauss},
                             "generator": None if generator is None else generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        name, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return state


def restore_rng_state(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Set the generators to what :func:`rng_state` returned (CUDA's only when CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    r = state["random"]
    random.setstate((r["version"], tuple(r["state"].tolist()), r["gauss_next"]))
    if state.get("numpy") is not None:
        import numpy

        n = state["numpy"]
        numpy.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"],
                                n["cached_gaussian"]))
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


# ---------------------------------------------------------------------- files

def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None]) -> Path:
    """Write ``path`` through ``write(file)`` so that it is never seen incomplete: a temporary file in the same
    folder, flushed and ``fsync``-ed, renamed over ``path``, then the folder ``fsync``-ed. On any error (or an
    interrupt) the temporary file is removed and ``path`` is as it was.

    :raises OSError: from the file system (full disk...), naming the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # some file systems cannot open a folder
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _check_plain(obj: Any, where: str, depth: int = 0) -> None:
    """Refuse anything ``torch.load(weights_only=True)`` would not read back, naming where it is."""
    if isinstance(obj, _PLAIN) or depth > 64:
        return
    if isinstance(obj, (dict, list, tuple)):
        for key, value in obj.items() if isinstance(obj, dict) else enumerate(obj):
            _check_plain(key, f"{where} key {key!r}", depth + 1)
            _check_plain(value, f"{where}[{key!r}]", depth + 1)
        return
    raise CheckpointError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: checkpoints hold "
                          f"tensors, numbers, strings, None and dicts, lists and tuples of them only")


def _distributions(plugins: list[Any]) -> dict[str, str]:
    """``{distribution: version}`` of the kernel and of the packages the plugins' classes come from (a package
    whose import name is not its distribution's name, such as a script's module, is left out)."""
    from importlib.metadata import PackageNotFoundError, distribution

    out = {"clkernel": _kernel_version()}
    for top in dict.fromkeys(type(plugin).__module__.split(".")[0] for plugin in plugins):
        with contextlib.suppress(PackageNotFoundError, ValueError):
            dist = distribution(top)
            out[dist.metadata["Name"]] = dist.version
    return out


def _kernel_version() -> str:
    import clkernel

    return clkernel.__version__


def save_checkpoint(path: str | os.PathLike[str], strategy: Strategy,
                    position: Mapping[str, Any] | None = None) -> Path:
    """Write ``strategy``'s state (:meth:`~clkernel.Strategy.state_dict`) to ``path``, atomically.

    :param position: where a resumed run starts: ``{"experience": experiences trained (the next one's index in
        the training stream), "epoch", "iteration" (within the epoch), "stage"}``, stage ``"train"`` (inside the
        experience, after ``iteration`` minibatches of ``epoch``), ``"eval"`` (experience ``experience - 1`` is
        trained, its evaluation not run yet) or ``"start"`` (nothing pending). Default: ``strategy.position``.
    :returns: ``path``.
    :raises CheckpointError: when a plugin's ``state_dict()`` holds something other than tensors and plain
        containers (naming the plugin and the key), or for a bad position.
    :raises OSError: when the file cannot be written (nothing is left behind then).
    """
    state = strategy.state_dict()
    if position is not None:
        state["loop"]["position"] = {k: position[k] for k in ("experience", "epoch", "iteration", "stage")}
    position = state["loop"]["position"]
    if position["stage"] not in STAGES or not all(isinstance(position[k], int) and position[k] >= 0
                                                  for k in ("experience", "epoch", "iteration")):
        raise CheckpointError(f"bad checkpoint position {position!r}: non-negative experience, epoch and "
                              f"iteration, and a stage among {STAGES}")
    for name, plugin_state in state["plugins"].items():
        _check_plain(plugin_state, f"plugin {name!r}: state_dict()")
    _check_plain(state, "the strategy's state_dict()")
    buffer = io.BytesIO()
    torch.save({"state": state, "position": position}, buffer)
    payload = buffer.getbuffer()
    header = {"kind": KIND, "format": FORMAT_VERSION, "kernel": _kernel_version(),
              "distributions": _distributions(strategy.plugins), "plugins": list(strategy.plugin_names),
              "position": dict(position), "iteration": strategy.state.iteration,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "size": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest()}
    blob = {"header": header, "payload": torch.frombuffer(payload, dtype=torch.uint8)}
    return atomic_write(path, lambda f: torch.save(blob, f))


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and the checked payload (``{"state", "position"}``) of a checkpoint file; reads, never writes.

    :raises CheckpointError: naming the file: missing or unreadable; truncated or corrupt (not a complete file,
        or a checksum that does not match); holding a pickled object (``weights_only`` refuses it); not a
        clkernel checkpoint; of a newer format version than :data:`FORMAT_VERSION`.
    """
    where = f"checkpoint {path}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{where}: cannot read it: {e.strerror or e}") from None
    blob = _weights_only(data, where)
    header = blob.get("header") if isinstance(blob, dict) else None
    if not isinstance(header, dict) or header.get("kind") != KIND or not isinstance(blob.get("payload"),
                                                                                    torch.Tensor):
        raise CheckpointError(f"{where} is not a clkernel checkpoint (no clkernel header)")
    version = header.get("format")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{where} has format version {version!r}, newer than this clkernel "
                              f"({_kernel_version()}) reads (up to {FORMAT_VERSION}): upgrade clkernel to load it")
    payload = blob["payload"]
    raw = payload.numpy().tobytes() if payload.dtype == torch.uint8 and payload.ndim == 1 else b""
    if len(raw) != header.get("size") or hashlib.sha256(raw).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"{where} is corrupt: its payload ({len(raw)} bytes) does not match the size and "
                              f"sha256 checksum in its header")
    content = _weights_only(raw, where)
    if not isinstance(content, dict) or not isinstance(content.get("state"), dict):
        raise CheckpointError(f"{where} is corrupt: its payload holds no strategy state")
    return header, content


def _weights_only(data: bytes, where: str) -> Any:
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        text = " ".join(str(e).split())
        if "weights_only" in text.lower() or "Unsupported global" in text or "Unsupported operand" in text:
            found = re.search(r"(GLOBAL|global|Unsupported operand) ?:? ?([\w.]+)?", text)
            what = f" ({found.group(0)})" if found else ""
            raise CheckpointError(f"{where} holds a pickled object that is not a tensor or plain container{what}; "
                                  f"refused: a checkpoint file holds tensors and plain containers only, so that "
                                  f"loading it cannot run code") from None
        raise CheckpointError(f"{where} is truncated or corrupt: not a complete checkpoint file "
                              f"({type(e).__name__}: {text[:160]})") from None


def load_checkpoint(path: str | os.PathLike[str], strategy: Strategy) -> dict[str, Any]:
    """Load a checkpoint into ``strategy`` (built as the one that wrote it: same model, optimizer type, plugins in
    the same order), before it trains. Everything is checked before anything is loaded: an error leaves the
    strategy and every file as they were. Then ``strategy.train`` (or :func:`clkernel.run`, given the remaining
    experiences) continues from the checkpoint's position.

    :returns: the position (see :func:`save_checkpoint`).
    :raises CheckpointError: as :func:`read_checkpoint`, or when the checkpoint does not fit the strategy: a
        missing or extra plugin (named), a model parameter of another shape (named), an optimizer of another
        layout, a plugin that refuses its state (named, with its error).
    """
    header, content = read_checkpoint(path)
    try:
        strategy.load_state_dict(content["state"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from e
    return dict(content["position"])


def checkpoint_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint files ``checkpoint-NNNNNN.pt`` in ``folder``, oldest first (empty for no folder)."""
    try:
        names = [n for n in os.listdir(folder) if _NAME.fullmatch(n)]
    except OSError:
        return []
    return [Path(folder) / n for n in sorted(names, key=lambda n: int(_NAME.fullmatch(n).group(1)))]  # type: ignore


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The newest checkpoint file in ``folder`` (written atomically, so complete), or None."""
    files = checkpoint_files(folder)
    return files[-1] if files else None


# ---------------------------------------------------------------------- the policy

class Checkpointer:
    """When the loop writes checkpoints, and where: ``folder/checkpoint-NNNNNN.pt``, numbered in order.

    The loop (:class:`~clkernel.Strategy`, given ``checkpoint=``) writes one after every ``every`` training
    iterations, after the first iteration that ends ``minutes`` or more after the last checkpoint, always at the
    end of each training experience (before its evaluation), and at the end of the current iteration when
    :meth:`request` was called. The newest ``keep`` files are kept; older ones are removed once the new one is
    complete.

    :param folder: created when the first checkpoint is written.
    :param every: training iterations between checkpoints (0: none on that count).
    :param minutes: minutes between checkpoints (0: none on that count).
    :param keep: how many checkpoint files to keep (>= 1).
    :raises ValueError: for a negative ``every`` or ``minutes``, or ``keep < 1``.
    """

    def __init__(self, folder: str | os.PathLike[str], *, every: int = 0, minutes: float = 0.0,
                 keep: int = 3) -> None:
        from clkernel.validate import non_negative_int, non_negative_number, positive_int

        self.folder, self.every = Path(folder), non_negative_int(every, "every", "Checkpointer")
        self.seconds = non_negative_number(minutes, "minutes", "Checkpointer") * 60.0
        self.keep = positive_int(keep, "keep", "Checkpointer")
        #: Set by the loop while a request can wait for the end of the current iteration or experience.
        self.deferrable = False
        #: The exception :meth:`request` was given, raised by the loop once the checkpoint is written.
        self.requested: BaseException | None = None
        self._last = time.monotonic()

    def due(self, iteration: int) -> bool:
        """Whether a checkpoint is due after training iteration ``iteration`` (counted from the run's start)."""
        if self.every and iteration % self.every == 0:
            return True
        return bool(self.seconds) and time.monotonic() - self._last >= self.seconds

    def request(self, exc: BaseException) -> bool:
        """Ask for a checkpoint at the loop's next checkpoint point, after which the loop raises ``exc``
        (a ``KeyboardInterrupt`` from a signal handler). Returns False, recording nothing, when the loop is not
        inside a training experience (start-up, evaluation...): the caller should then raise ``exc`` at once, the
        last checkpoint holding everything done so far."""
        if not self.deferrable:
            return False
        self.requested = exc
        return True

    def save(self, strategy: Strategy, position: Mapping[str, Any] | None = None) -> Path:
        """Write the next checkpoint file, then remove the oldest beyond ``keep``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        files = checkpoint_files(self.folder)
        number = int(_NAME.fullmatch(files[-1].name).group(1)) + 1 if files else 1  # type: ignore[union-attr]
        path = save_checkpoint(self.folder / f"checkpoint-{number:06d}.pt", strategy, position)
        self._last = time.monotonic()
        for old in [*files, path][:-self.keep]:
            with contextlib.suppress(OSError):
                old.unlink()
        return path
