"""A conformance kit for training plugins: one call checks that a plugin composes, checkpoints and resumes.

:func:`check_training_plugin` runs a plugin on the small embedded ``split-digits`` benchmark (four experiences,
a 64-32-10 MLP, minibatches of 32, one epoch, SGD with momentum, on the CPU with one intra-op thread,
everything seeded: about a second) and checks, in this order:

``options``
    (only when ``name`` is given) the registered factory's options are exactly those ``clkernel show plugin
    NAME`` prints, each is annotated (or has a default) so that ``clkernel run --plugin NAME:key=value`` can
    convert its value, and the ``options`` given to the kit are accepted by it.
``compose``
    ``Strategy(..., plugins=[plugin, replay, default metrics])`` is built, trained and evaluated with
    :func:`clkernel.run`; every scalar metric it returns is finite (a tensor may hold NaN, "unknown", never an
    infinity), the test stream was evaluated, and the model's parameters are finite.
``state_dict``
    after ``resume_at`` experiences (default: half the stream), ``state_dict()`` survives ``torch.save`` /
    ``torch.load(weights_only=True)`` unchanged; a fresh plugin that loads it returns the same ``state_dict()``; a
    state dict taken earlier does not change when training goes on (it holds copies, not live objects). A plugin
    with neither ``state_dict`` nor ``load_state_dict`` counts as stateless and passes only if training leaves its
    attributes as they were; one of the two methods without the other fails.
``resume``
    the uninterrupted run (one strategy, two ``train()`` calls, split after ``resume_at`` experiences) writes
    checkpoint files (:func:`clkernel.save_checkpoint`, through the loop's :class:`~clkernel.Checkpointer`) at
    each experience's end and inside experience ``resume_at``, after its first minibatch; a fresh model, optimizer,
    plugin and strategy load one (:func:`clkernel.load_checkpoint`) and train the remaining experiences,
    re-entering the experience where the checkpoint was taken, as a killed run does: by default the one at the
    split, then the one inside the next experience (``resume_inside`` picks one of the two). The model's
    parameters and buffers, and the plugin's ``state_dict()``, must equal (``torch.equal``) those of the
    uninterrupted run: on one CPU, with the same seed and the same order of operations, a faithful checkpoint
    resumes bit for bit. So the plugin must rebuild what it derives in ``before_training_exp`` from its state
    when a run resumes inside an experience (that event does not fire again; see docs/checkpoint.md).

Each failure raises :class:`AssertionError` whose message names the plugin and the check. The kit needs the
``replay`` plugin, the ``default`` metric and the ``split-digits`` benchmark installed (clkernel-replay,
clkernel-metrics, clkernel-benchmarks); it never imports torchvision.

:func:`torchrun` launches a real distributed job (``torchrun`` on gloo) for a plugin's own tests of how it runs
on several processes (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import io
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from attrs import frozen

from clkernel.checkpoint import Checkpointer, checkpoint_files, load_checkpoint, read_checkpoint
from clkernel.discovery import load, registry
from clkernel.loop import Strategy, run
from clkernel.names import parse_metric_name
from clkernel.types import Benchmark

__all__ = ["CHECKS", "CheckResult", "check_training_plugin", "cli_in_process", "torchrun"]

#: The checks of :func:`check_training_plugin`, in the order they run.
CHECKS: tuple[str, ...] = ("options", "compose", "state_dict", "resume")

@frozen
class CheckResult:
    """The outcome of one check: ``status`` is ``"passed"`` or ``"skipped"`` (a failure raises instead)."""

    check: str
    status: str
    detail: str
    seconds: float


@contextlib.contextmanager
def cli_in_process() -> Iterator[Callable[..., int]]:
    """The ``clkernel`` command's ``main`` to call in this process, for tests of what a command computes or
    refuses without an interpreter start and torch's import: ``main("run", "--benchmark", "split-digits")``
    returns the exit code (also argparse's, which a real process exits with). On leaving, what ``main`` changes
    in the process is put back: the ``clkernel`` logger's handlers (those it added closed), level and
    propagation, structlog's configuration, and the random generators it seeds (Python's, numpy's and torch's).
    Signals, exit codes of a real process and what the interpreter does at start need a real process."""
    import logging
    import random

    import numpy
    import structlog

    from clkernel.cli import main

    logger = logging.getLogger("clkernel")
    handlers, level, propagate, config = list(logger.handlers), logger.level, logger.propagate, structlog.get_config()
    generators = random.getstate(), numpy.random.get_state(), torch.random.get_rng_state()

    def call(*argv: Any) -> int:
        try:
            return main([str(a) for a in argv])
        except SystemExit as e:  # argparse: a usage error (2), --help or --version (0)
            return e.code if isinstance(e.code, int) else int(e.code is not None)

    try:
        yield call
    finally:
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        structlog.configure(**config)
        random.setstate(generators[0])
        numpy.random.set_state(generators[1])
        torch.random.set_rng_state(generators[2])


class _Failure(AssertionError):
    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


@contextlib.contextmanager
def _check(check: str, results: list[CheckResult], detail: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    except _Failure:
        raise
    except Exception as e:  # noqa: BLE001 - any error inside a check is that check's failure
        raise _Failure(check, f"{type(e).__name__}: {e}") from e
    results.append(CheckResult(check, "passed", detail, time.perf_counter() - start))


def check_training_plugin(
    factory: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    options: Mapping[str, Any] | None = None,
    model: torch.nn.Module | Callable[[], torch.nn.Module] | None = None,
    benchmark: Benchmark | None = None,
    resume_at: int | None = None,
    seed: int = 0,
    resume_atol: float = 0.0,
    resume_inside: bool | None = None,
) -> list[CheckResult]:
    """Check the training plugin that ``factory(**options)`` builds: the checks of :data:`CHECKS` (see the
    module docstring for what each verifies).

    :param factory: builds a fresh plugin on every call (a class, or a registration factory). Default: the
        factory registered under ``name``.
    :param name: the registered plugin name; enables the ``options`` check.
    :param options: keyword options given to the factory on every call (default none).
    :param model: a module (deep-copied for every run) or a function building one; default a small MLP sized
        for the benchmark. Its parameters must not change shape during training (the resumed model loads the
        checkpoint before any experience).
    :param benchmark: with ``train`` and ``test`` streams of at least two experiences; default ``split-digits``
        with 4 experiences.
    :param resume_at: experiences trained before the checkpoint (default: half the stream).
    :param seed: seeds the model, the plugin's construction, the loop's minibatch order and torch's global
        random state (restored afterwards).
    :param resume_atol: 0 demands bit-identical parameters after resuming. Give a small tolerance only for a
        plugin that cannot be bit-identical, and say why next to the call.
    :param resume_inside: which checkpoint the ``resume`` check resumes from: by default both, one after the
        other: the one at the end of experience ``resume_at`` and the one inside the next experience (after its
        first minibatch), which is what ``clkernel run --resume`` meets after SIGKILL or SIGTERM at any moment.
        ``True``: only the one inside; ``False``: only the one at the end (for a plugin that cannot yet resume
        inside an experience: say why next to the call).
    :returns: one :class:`CheckResult` per check, in order (``options`` is skipped without ``name``).
    :raises AssertionError: ``"<plugin> fails check '<check>': <what differs>"``, for the first check that fails.
    :raises ValueError: for unusable arguments (no factory and no name, a stream too short, a bad ``resume_at``).
    :raises clkernel.RegistryError: when ``name``, or the replay plugin, default metric or split-digits
        benchmark the kit uses, is not installed.
    """
    if factory is None and name is None:
        raise ValueError("check_training_plugin needs a factory or a registered plugin name")
    options = dict(options or {})
    if factory is None:
        factory = registry().get("plugin", name).factory  # type: ignore[arg-type]
    label = name or getattr(factory, "__qualname__", None) or repr(factory)
    bench = benchmark if benchmark is not None else load("benchmark", "split-digits", n_experiences=4, seed=seed)
    train_stream, test_stream = bench.streams["train"], bench.streams["test"]
    if len(train_stream) < 2:
        raise ValueError(f"check_training_plugin needs a train stream of at least 2 experiences, got "
                         f"{len(train_stream)}")
    k = len(train_stream) // 2 if resume_at is None else resume_at
    if not 0 < k < len(train_stream):
        raise ValueError(f"resume_at must be in 1..{len(train_stream) - 1}, got {resume_at!r}")
    setup = _Setup(factory, options, model, bench, seed)
    results: list[CheckResult] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only competes with the first
    try:
        with torch.random.fork_rng(devices=[]):
            if name is None:
                results.append(CheckResult("options", "skipped", "no registered name given", 0.0))
            else:
                with _check("options", results, f"`clkernel show plugin {name}` lists the factory's options"):
                    _check_options(name, options)
            with _check("compose", results, "trains and evaluates with replay and the default metrics"):
                _check_compose(setup)
            with _check("state_dict", results, "weights_only round trip, load then state_dict, no live objects"):
                _check_state_dict(setup, train_stream[:k], test_stream)
            inside = [False, True] if resume_inside is None else [resume_inside]
            where = " and ".join(f"inside experience {k + 1} of {len(train_stream)}, after its first minibatch"
                                 if at_inside else f"after {k} of {len(train_stream)} experiences"
                                 for at_inside in inside)
            with _check("resume", results, f"resumed {where}"), tempfile.TemporaryDirectory() as folder:
                model_a, plugin_a = _uninterrupted(setup, train_stream, test_stream, k, Path(folder))
                for at_inside in inside:
                    _check_resume(setup, Path(folder), k, model_a, plugin_a, train_stream[k:], test_stream,
                                  resume_atol, at_inside)
    except _Failure as e:
        raise AssertionError(f"{label} fails check '{e.check}': {e}") from e.__cause__
    finally:
        torch.set_num_threads(threads)
    return results


# ---------------------------------------------------------------------------- building runs

class _Setup:
    """Builds the same model, optimizer, plugin and strategy for every run."""

    def __init__(self, factory: Callable[..., Any], options: dict[str, Any], model: Any, bench: Benchmark,
                 seed: int) -> None:
        self.factory, self.options, self.model, self.bench, self.seed = factory, options, model, bench, seed

    def build_model(self) -> torch.nn.Module:
        if isinstance(self.model, torch.nn.Module):
            return copy.deepcopy(self.model)
        if self.model is not None:
            return self.model()
        inputs = math.prod(self.bench.input_shape)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(inputs, 32), torch.nn.ReLU(),
                                   torch.nn.Linear(32, self.bench.num_classes))

    def build(self, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
        """A model, its optimizer and a plugin, built after seeding torch's global generator with ``seed``."""
        torch.manual_seed(seed)
        model = self.build_model()
        plugin = self.factory(**self.options)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), plugin

    def strategy(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, plugins: list[Any],
                 generator: torch.Generator, checkpoint: Checkpointer | None = None) -> Strategy:
        return Strategy(model, optimizer, plugins=plugins, train_mb_size=32, eval_mb_size=256, train_epochs=1,
                        device="cpu", generator=generator, checkpoint=checkpoint)


class _CheckpointInside(Checkpointer):
    """Besides the experience ends, one checkpoint inside experience ``k``, after its first minibatch."""

    def __init__(self, folder: Path, k: int) -> None:
        super().__init__(folder, keep=10**6)
        self.k, self.strategy = k, None

    def due(self, iteration: int) -> bool:
        s = self.strategy.state  # type: ignore[union-attr]
        return s.experiences_trained == self.k and s.epoch == 0 and s.epoch_iteration == 1


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    from clkernel.cli import cmd_show

    comp = registry().get("plugin", name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cmd_show(argparse.Namespace(kind="plugin", name=name))
    lines = out.getvalue().splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("options:")), len(lines))
    shown = [line.strip().split(":")[0].split(" = ")[0] for line in lines[at + 1:] if line.startswith("  ")]
    expected = list(comp.options())
    if shown != expected:
        raise _Failure("options", f"`clkernel show plugin {name}` lists options {shown}, but the registered "
                                  f"factory takes {expected}")
    for param in comp.options().values():
        if param.annotation is param.empty and param.default in (param.empty, None):
            what = "no default" if param.default is param.empty else "a default of None, which gives no type"
            raise _Failure("options", f"option {param.name!r} has no annotation and {what}: "
                                      f"`clkernel run --plugin {name}:{param.name}=...` can only guess its type from "
                                      f"the text (5 an int, abc a string); annotate it "
                                      f"({param.name}: int | None = None, for example)")
    try:
        inspect.signature(comp.factory).bind(**options)
    except TypeError as e:
        raise _Failure("options", f"the registered factory does not take options {dict(options)} ({e}); its "
                                  f"options: {expected}") from None


def _check_compose(setup: _Setup) -> None:
    model, optimizer, plugin = setup.build(setup.seed)
    replay = load("plugin", "replay", mem_size=100, seed=setup.seed)
    strategy = setup.strategy(model, optimizer, [plugin, replay, load("metric", "default")],
                              torch.Generator().manual_seed(setup.seed))
    results = run(strategy, setup.bench, eval_streams=("test",))
    if not results:
        raise _Failure("compose", "clkernel.run returned no metric: the default metrics logged nothing")
    evaluated = False
    for key, value in results.items():
        bad = _not_finite(value)
        if bad:
            raise _Failure("compose", f"metric {key!r} is {bad}")
        with contextlib.suppress(ValueError):
            parsed = parse_metric_name(key)
            evaluated |= parsed.phase == "eval" and parsed.stream == "test"
    if not evaluated:
        raise _Failure("compose", f"no metric of the test stream came back (got {sorted(results)})")
    for pname, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise _Failure("compose", f"parameter {pname!r} is not finite after training")


def _not_finite(value: Any) -> str:
    """Why ``value`` is not an acceptable metric value ("" when it is)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        if value.numel() == 1:
            return "" if bool(torch.isfinite(value)) else f"not finite ({value.item()})"
        return "a tensor holding an infinity" if bool(torch.isinf(value).any()) else ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
        return f"not finite ({value})"
    return ""


# ---------------------------------------------------------------------------- checkpoints

def _has_state(plugin: Any, check: str) -> bool:
    has = [callable(getattr(plugin, m, None)) for m in ("state_dict", "load_state_dict")]
    if has[0] != has[1]:
        raise _Failure(check, f"{type(plugin).__name__} has {'state_dict' if has[0] else 'load_state_dict'} "
                              f"but not {'load_state_dict' if has[0] else 'state_dict'}: give it both, or neither "
                              f"if it keeps no state")
    return has[0]


def _round_trip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _train(setup: _Setup, model: torch.nn.Module, optimizer: torch.optim.Optimizer, plugin: Any,
           generator: torch.Generator, experiences: Any, test: Any, checkpoint: Checkpointer | None = None,
           ) -> Strategy:
    strategy = setup.strategy(model, optimizer, [plugin], generator, checkpoint)
    if isinstance(checkpoint, _CheckpointInside):
        checkpoint.strategy = strategy
    strategy.train(experiences, eval_streams=[test])
    return strategy


def _uninterrupted(setup: _Setup, train: Any, test: Any, k: int, folder: Path) -> tuple[torch.nn.Module, Any]:
    """Train the whole stream with one strategy (two train() calls, split after ``k`` experiences), writing
    checkpoints into ``folder``; a state dict taken at the split must not change afterwards."""
    model, optimizer, plugin = setup.build(setup.seed)
    stateful = _has_state(plugin, "state_dict")
    generator = torch.Generator().manual_seed(setup.seed)
    strategy = _train(setup, model, optimizer, plugin, generator, train[:k], test, _CheckpointInside(folder, k))
    if stateful:
        early = plugin.state_dict()
        saved = _round_trip(early)
    strategy.train(train[k:], eval_streams=[test])
    strategy.close()
    if stateful:
        where = _differs(saved, _round_trip(early))
        if where is not None:
            raise _Failure("state_dict", f"a state_dict() taken after {k} experiences changed while training "
                                         f"went on (at {where}): return copies, not live tensors or containers")
    return model, plugin


def _check_state_dict(setup: _Setup, first: Any, test: Any) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """Train ``first``; return the checkpoint (after a weights_only round trip) and a fresh model, optimizer and
    plugin, the plugin loaded from the checkpoint."""
    model, optimizer, plugin = setup.build(setup.seed)
    stateful = _has_state(plugin, "state_dict")
    before = _snapshot(plugin) if not stateful else None
    generator = torch.Generator().manual_seed(setup.seed)
    strategy = _train(setup, model, optimizer, plugin, generator, first, test)
    state = strategy.state
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
            "rng": torch.get_rng_state(), "plugin": plugin.state_dict() if stateful else None,
            "loop": {"iteration": state.iteration, "experiences_trained": state.experiences_trained}}
    if stateful:
        if not isinstance(ckpt["plugin"], Mapping):
            raise _Failure("state_dict", f"state_dict() returned a {type(ckpt['plugin']).__name__}, not a dict")
        try:
            _round_trip(ckpt["plugin"])
        except Exception as e:  # noqa: BLE001 - pickle errors come as many types
            why = str(e).split("WeightsUnpickler error: ")[-1].split(". ")[0].strip()
            raise _Failure("state_dict", f"state_dict() cannot be loaded by torch.load(weights_only=True) "
                                         f"({type(e).__name__}: {why}); keep it to tensors, numbers, strings, "
                                         f"None and dicts, lists and tuples of them") from e
    loaded = _round_trip(ckpt)
    strategy.close()
    if stateful:
        where = _differs(ckpt["plugin"], loaded["plugin"])
        if where is not None:
            raise _Failure("state_dict", f"state_dict() changed through torch.save / torch.load at {where}")
    elif before is not None:
        where = _differs(before, _snapshot(plugin), "attributes")
        if where is not None:
            raise _Failure("state_dict", f"{type(plugin).__name__} has no state_dict() but training changed its "
                                         f"{where}: give it state_dict() and load_state_dict()")
    fresh = setup.build(setup.seed + 1)  # fresh objects owe nothing to the first run's seed
    if stateful:
        fresh[2].load_state_dict(loaded["plugin"])
        where = _differs(ckpt["plugin"], fresh[2].state_dict())
        if where is not None:
            raise _Failure("state_dict", f"after load_state_dict(), state_dict() differs from the state loaded "
                                         f"(at {where}): a checkpoint taken right after resuming would lose it")
    return loaded, fresh


def _check_resume(setup: _Setup, folder: Path, k: int, model_a: torch.nn.Module, plugin_a: Any, rest: Any,
                  test: Any, atol: float, resume_inside: bool) -> None:
    positions = {f: read_checkpoint(f)[0]["position"] for f in checkpoint_files(folder)}
    inside = [f for f, p in positions.items() if p["stage"] == "train" and resume_inside]
    at = f"inside experience {k + 1}"
    if not inside:  # at the split (or the experience ran no minibatch: a plugin skipped it)
        inside = [f for f, p in positions.items() if p["stage"] == "eval" and p["experience"] == k]
        at = f"after experience {k}"
    model, optimizer, plugin = setup.build(setup.seed + 1)  # fresh objects owe nothing to the first run's seed
    strategy = setup.strategy(model, optimizer, [plugin], torch.Generator())
    load_checkpoint(inside[0], strategy)
    strategy.train(rest, eval_streams=[test])
    strategy.close()
    expected, got = model_a.state_dict(), model.state_dict()
    bad = []
    for key, value in expected.items():
        other = got.get(key)
        if other is None or other.shape != value.shape:
            bad.append(f"{key} (missing or reshaped)")
        elif not (torch.equal(value, other) if atol == 0 else torch.allclose(value, other, rtol=0, atol=atol)):
            diff = (value.double() - other.double()).abs().max().item()
            bad.append(f"{key} (max abs difference {diff:.3g})")
    if bad:
        raise _Failure("resume", f"after resuming {at}, {len(bad)} of {len(expected)} model tensors differ from the "
                                 f"uninterrupted run: {', '.join(bad[:4])}; state_dict()/load_state_dict() do not "
                                 f"carry everything training depends on")
    if _has_state(plugin, "resume"):
        where = _differs(plugin_a.state_dict(), plugin.state_dict())
        if where is not None:
            raise _Failure("resume", f"after resuming {at}, the plugin's state_dict() differs from the uninterrupted "
                                     f"run's at {where}")


# ---------------------------------------------------------------------------- comparing states

def _snapshot(obj: Any) -> Any:
    try:
        return copy.deepcopy(dict(vars(obj)))
    except Exception:  # noqa: BLE001 - an attribute that cannot be copied: only the resume check applies
        return None


def _differs(a: Any, b: Any, path: str = "state", depth: int = 0) -> str | None:
    """The path of the first difference between ``a`` and ``b`` (with what differs), or None when equal."""
    if depth > 40:
        return None
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{path} ({type(a).__name__} vs {type(b).__name__})"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{path} ({a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)})"
        a, b = a.detach().cpu(), b.detach().cpu()
        same = torch.equal(a, b) or (a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all()))
        return None if same else f"{path} (values)"
    if isinstance(a, torch.Generator) and isinstance(b, torch.Generator):
        return _differs(a.get_state(), b.get_state(), path, depth + 1)
    if isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module):
        return _differs(a.state_dict(), b.state_dict(), path, depth + 1)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{path} (keys {sorted(map(str, set(a) ^ set(b)))} in one only)"
        for key in a:
            where = _differs(a[key], b[key], f"{path}[{key!r}]", depth + 1)
            if where is not None:
                return where
        return None
    if type(a) is not type(b):
        return f"{path} ({type(a).__name__} vs {type(b).__name__})"
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            where = _differs(x, y, f"{path}[{i}]", depth + 1)
            if where is not None:
                return where
        return None
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return None
    if isinstance(a, (int, float, str, bytes, bool, type(None))):
        return None if a == b else f"{path} ({a!r} vs {b!r})"
    if hasattr(a, "__dict__"):
        return _differs(vars(a), vars(b), path, depth + 1)
    return None if a == b else f"{path} (not equal)"


def torchrun(*args: str, nproc: int = 2, timeout: float = 240, popen: bool = False,
             env: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    """A real ``torchrun --standalone --nproc_per_node=NPROC ARGS`` launch, for tests of distributed behaviour:
    ``args`` are a script and its arguments, or ``-m clkernel run ...``. On a machine without CUDA the processes
    join with gloo (a script calls ``torch.distributed.init_process_group("gloo")``, or
    :func:`clkernel.distributed.init_from_environment`). Each process runs one thread (``OMP_NUM_THREADS=1``),
    finds this interpreter's packages, and ``CLKERNEL_LOG_LEVEL`` is ``warning`` unless ``env`` says otherwise;
    ``--standalone`` picks a free rendezvous port, so launches may run side by side.

    :param env: variables added to the environment.
    :param popen: return the running ``subprocess.Popen`` (stdout and stderr piped, text) instead of waiting, to
        watch or kill the job.
    :param kwargs: passed to ``subprocess.run`` / ``Popen`` (``cwd``...).
    :returns: the ``subprocess.CompletedProcess`` (stdout and stderr captured, text), or the ``Popen``.
    :raises subprocess.TimeoutExpired: when the job runs longer than ``timeout`` seconds (not with ``popen``).
    """
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CLKERNEL_LOG_LEVEL": "warning",
                   "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    if popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=environment, **kwargs)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, **kwargs)
