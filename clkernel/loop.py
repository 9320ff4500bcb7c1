"""The training and evaluation loop: the pseudocode at the top of :mod:`clkernel.hookspecs`, in Python.

Composition and dispatch live in :mod:`clkernel.dispatch`; this module only fires events in order. Per-iteration
events go through callables built once per ``train()`` / ``eval()`` call; an event nobody implements is skipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

from clkernel.log import get_logger
import torch

from clkernel.data import iterate_minibatches
from clkernel.dispatch import Dispatcher, PluginError, compose
from clkernel.modules import DynamicModule, adapt_model, eval_mode, model_forward
from clkernel.state import TrainState
from clkernel.types import Benchmark, Experience, Stream, as_experiences
from clkernel.validate import positive_int

__all__ = ["NONFINITE_CHECK_EVERY", "Naive", "NonFiniteLossError", "Strategy", "run"]

log = get_logger("clkernel")

#: Training iterations between two checks that the loss is finite, by device type (``"default"``: the others),
#: and at each epoch's end. A check waits for the device; on CPU that costs nothing, so the loss is checked at once.
NONFINITE_CHECK_EVERY = {"cpu": 1, "default": 1024}


class NonFiniteLossError(FloatingPointError):
    """The training loss was not finite (nan or inf): training diverged (learning rate, momentum), or the data or
    a plugin's loss term is broken. ``.experience`` (its index), ``.epoch`` and ``.iteration`` (within the epoch)
    locate the first such minibatch; ``.part`` names what was not finite (``"criterion"``, a plugin's name for
    its loss term, or ``"sum"`` when every part was finite but their sum was not) and ``.value`` is its value."""

    def __init__(self, message: str, *, experience: int, epoch: int, iteration: int, part: str,
                 value: float) -> None:
        super().__init__(message)
        self.experience, self.epoch, self.iteration, self.part, self.value = experience, epoch, iteration, part, value


class Strategy:
    """The continual-learning loop: ``train(experiences, eval_streams)`` then ``eval(stream)``, firing the events
    of :mod:`clkernel.hookspecs` for the plugins.

    :param model: a ``torch.nn.Module``; moved to ``device``.
    :param optimizer: built over ``model``'s parameters; dynamic modules' new parameters join it.
    :param criterion: ``criterion(output, y) -> 0-d tensor``; default ``torch.nn.CrossEntropyLoss()``.
    :param plugins: objects implementing events, called in this order.
    :param train_mb_size: training minibatch size; ``eval_mb_size`` the evaluation one (default the same).
    :param train_epochs: epochs per training experience.
    :param device: default ``cuda`` when available, else ``cpu``.
    :param eval_every: when ``train()`` evaluates its ``eval_streams``: -1 never, 0 after each training
        experience (the default), k > 0 also every k epochs.
    :param generator: the ``torch.Generator`` that shuffles training minibatches (default: torch's global one).
    :param trace: dispatch every event through pluggy's hook calls, so that
        ``strategy.plugin_manager.add_hookcall_monitoring`` sees them (slower).
    :param on_nonfinite: what a training loss that is nan or inf does: ``"raise"`` (the default) ends
        ``train()`` with :class:`NonFiniteLossError`, naming the experience, epoch and iteration of the first such
        minibatch and the part of the loss (the criterion's, or which plugin's loss term) that was not finite;
        ``"warn"`` logs that as a ``nonfinite_loss`` warning, once per epoch, and trains on. On CPU the loss is
        checked at every iteration, before ``loss.backward()``; on other devices, so as not to wait for the
        device at every minibatch, every 1024 iterations (:data:`NONFINITE_CHECK_EVERY`) and at each epoch's end,
        before :func:`after_training_epoch`: the iterations after the first non-finite one run until then.
    :raises ValueError: for a size or epoch count that is not a positive integer, ``eval_every < -1``, or an
        ``on_nonfinite`` other than ``"raise"`` or ``"warn"``.
    :raises TypeError: when ``model`` is not a module.
    :raises CompositionError: when a plugin cannot be composed (see :func:`clkernel.dispatch.compose`).

    The rank and world size come from ``torch.distributed`` when a process group is initialised.
    Use ``with strategy:`` (or call :meth:`close`) so that :func:`after_run` fires and files are closed; leaving
    the ``with`` block on an exception sets ``state.outcome`` to ``"failed"`` (``"interrupted"`` for a
    ``KeyboardInterrupt``) and ``state.error`` first, and :meth:`close` sets a ``"running"`` outcome to
    ``"completed"``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[..., torch.Tensor] | None = None,
        *,
        plugins: Iterable[Any] = (),
        train_mb_size: int = 32,
        train_epochs: int = 1,
        eval_mb_size: int | None = None,
        device: str | torch.device | None = None,
        eval_every: int = 0,
        generator: torch.Generator | None = None,
        trace: bool = False,
        on_nonfinite: str = "raise",
    ) -> None:
        positive_int(train_mb_size, "train_mb_size", "Strategy")
        positive_int(train_epochs, "train_epochs", "Strategy")
        eval_mb_size = positive_int(eval_mb_size if eval_mb_size is not None else train_mb_size, "eval_mb_size",
                                    "Strategy")
        if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < -1:
            raise ValueError(f"Strategy: eval_every must be an integer >= -1, got {eval_every!r}")
        if on_nonfinite not in ("raise", "warn"):
            raise ValueError(f"Strategy: on_nonfinite must be 'raise' or 'warn', got {on_nonfinite!r}")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        rank, world_size = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.plugins = list(plugins)
        self.eval_every = eval_every
        self.generator = generator
        self.on_nonfinite = on_nonfinite
        self._check_every = NONFINITE_CHECK_EVERY.get(device.type, NONFINITE_CHECK_EVERY["default"])
        self._warned: tuple[int, int] | None = None  # (experiences_trained, epoch) of the last nonfinite_loss warning
        self.plugin_manager = compose(self.plugins)
        self.dispatcher = Dispatcher(self.plugin_manager, rank=rank, trace=trace)
        self.state = TrainState(
            model=model.to(device), optimizer=optimizer, criterion=criterion or torch.nn.CrossEntropyLoss(),
            device=device, train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
            rank=rank, world_size=world_size, emit=self._emit_metrics,
        )
        self._log_metrics: tuple[tuple[str, Callable[..., Any]], ...] = ()
        self._loss_terms: tuple[tuple[str, Callable[..., Any]], ...] = ()
        self._started = self._closed = self._initial_eval_asked = False
        self._output_files: list[Path] = []

    # ------------------------------------------------------------------ dispatch

    def _prepare(self) -> None:
        if self._closed:
            raise RuntimeError("the strategy is closed (clkernel.run and `with strategy:` close it): its plugins "
                               "have released their files; build a new strategy to train or evaluate again")
        self.dispatcher.prepare()
        self._loss_terms = self.dispatcher.functions("loss_terms")
        self._log_metrics = self.dispatcher.functions("log_metrics")
        if not self._started:
            self._started = True
            self._fire("before_run")

    def _fire(self, event: str) -> None:
        call = self.dispatcher.calls.get(event)
        if call is not None:
            call(self.state)

    def _emit_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        for name, fn in self._log_metrics:
            try:
                fn(state, values)
            except Exception as e:
                raise PluginError(name, "log_metrics", e) from e

    # ------------------------------------------------------------------ the run

    def close(self) -> list[Path]:
        """End the run: fire :func:`after_run` on every rank, then collect :func:`output_files` (rank 0).
        Idempotent: a second call returns the same files and fires nothing.

        :returns: the files the plugins wrote, in plugin order (empty on other ranks).
        """
        if self._closed:
            return list(self._output_files)
        self._closed = True
        if self.state.outcome == "running":
            self.state.outcome = "completed"
        if not self._started:
            return []
        try:
            self._fire("after_run")
        finally:  # files written before a failing after_run are still reported
            for _, files in self.dispatcher.collect("output_files", state=self.state):
                self._output_files.extend(Path(f) for f in ([files] if isinstance(files, (str, Path)) else files))
        return list(self._output_files)

    def __enter__(self) -> Strategy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None and self.state.outcome == "running":
            self.state.outcome, self.state.error = _outcome_of(exc)
        self.close()

    # ------------------------------------------------------------------ training

    def train(self, experiences: Any, eval_streams: Iterable[Any] | None = None) -> dict[str, Any]:
        """Train on each experience in turn; evaluate ``eval_streams`` as ``eval_every`` says.

        :param experiences: an :class:`~clkernel.Experience`, a :class:`~clkernel.Stream` or a list of
            experiences, or one dataset of ``(x, y, t)``.
        :param eval_streams: streams (or lists of experiences) to evaluate; kept in ``state.eval_streams``.
            Evaluated before the first experience too when a plugin's :func:`needs_initial_eval` asks for it.
        :returns: the last value of every metric logged during the call (its evaluations included): numbers,
            tensors, or whatever the metrics logged.
        :raises PluginError: when a plugin fails, naming it and the event (under ``trace=True`` or a hook
            wrapper, the plugin's exception as pluggy raises it).
        :raises NonFiniteLossError: when the training loss is nan or inf and ``on_nonfinite="raise"``.
        :raises RuntimeError: when the strategy was closed.
        """
        exps = as_experiences(experiences, "train")
        s = self.state
        s.eval_streams = tuple(_as_stream(x) for x in (eval_streams or ()))
        self._prepare()
        s.metrics, s.is_training, s.stream_name = {}, True, _stream_name(exps[0], "train")
        self._fire("before_training")
        if not self._initial_eval_asked and s.experiences_trained == 0:
            self._initial_eval_asked = True
            if any(asked for _, asked in self.dispatcher.collect("needs_initial_eval", state=s)):
                if not s.eval_streams:
                    log.warning("initial_eval_skipped", reason="a plugin asked for an evaluation before training, "
                                "but train() was given no eval_streams")
                self._evaluate(s.eval_streams)
        for exp in exps:
            self._train_experience(exp)
        self._fire("after_training")
        return dict(s.metrics)

    def _train_experience(self, exp: Experience) -> None:
        s = self.state
        s.experience, s.stream_name, s.epoch, s.stop_training = exp, _stream_name(exp, "train"), 0, False
        log.info("experience_start", phase="train", experience=exp.index, classes=exp.classes,
                 samples=len(exp.dataset))
        s.model.train()
        self._fire("before_training_exp")
        self._fire("before_train_dataset_adaptation")
        s.dataset = exp.dataset.train()
        self._fire("after_train_dataset_adaptation")
        s.dataloader = _EpochLoader(s.dataset, s.train_mb_size, True, self.generator)
        adapt_model(s.model, exp, optimizer=s.optimizer, device=s.device)
        for s.epoch in range(s.train_epochs):  # modules keep the modes set above for the whole experience
            self._fire("before_training_epoch")
            self._train_epoch()
            self._fire("after_training_epoch")
            if self.eval_every > 0 and (s.epoch + 1) % self.eval_every == 0 and s.epoch + 1 < s.train_epochs:
                self._evaluate(s.eval_streams)
            if s.stop_training:
                break
        s.experiences_trained += 1
        self._fire("after_training_exp")
        log.info("experience_end", phase="train", experience=exp.index, epochs=s.epoch + 1)
        if self.eval_every >= 0:
            self._evaluate(s.eval_streams)

    def _train_epoch(self) -> None:
        s, c = self.state, self.dispatcher.calls
        before_it, before_fw, after_fw = c["before_training_iteration"], c["before_forward"], c["after_forward"]
        before_bw, after_bw = c["before_backward"], c["after_backward"]
        before_up, after_up, after_it = c["before_update"], c["after_update"], c["after_training_iteration"]
        terms_fns, model, optimizer = self._loss_terms, s.model, s.optimizer
        move = s.device.type != "cpu"
        check_every, losses, parts = self._check_every, [], []  # the unchecked losses, and their parts
        s.epoch_iteration = 0
        for mb in s.dataloader:  # type: ignore[union-attr]
            s.mb = self._to_device(mb) if move else mb
            if before_it: before_it(s)  # noqa: E701
            optimizer.zero_grad(set_to_none=True)
            if before_fw: before_fw(s)  # noqa: E701
            s.mb_output = model_forward(model, s.mb[0], s.mb[2])
            if after_fw: after_fw(s)  # noqa: E701
            loss = criterion_loss = self._criterion(s.mb_output, s.mb[1])
            if terms_fns:
                s.loss_terms = terms = {}
                for name, fn in terms_fns:
                    try:
                        term = fn(s)
                    except PluginError:
                        raise
                    except Exception as e:
                        raise PluginError(name, "loss_terms", e) from e
                    if term is not None:
                        terms[name] = term
                        loss = loss + term
                parts.append((criterion_loss, terms))
            s.loss = loss
            losses.append(loss.detach())
            if len(losses) == check_every:
                self._check_finite(losses, parts, s.epoch_iteration + 1)
            if before_bw: before_bw(s)  # noqa: E701
            s.loss.backward()
            if after_bw: after_bw(s)  # noqa: E701
            if before_up: before_up(s)  # noqa: E701
            optimizer.step()
            if after_up: after_up(s)  # noqa: E701
            s.iteration += 1
            s.epoch_iteration += 1
            if after_it: after_it(s)  # noqa: E701
        if losses:
            self._check_finite(losses, parts, s.epoch_iteration)

    def _check_finite(self, losses: list[torch.Tensor], parts: list[tuple[Any, dict[str, Any]]], end: int) -> None:
        """Check the losses of this epoch's iterations ``end - len(losses)`` to ``end - 1`` (one device sync) and
        forget them; raise or warn (``on_nonfinite``) naming the first non-finite one and what in it was not."""
        one = len(losses) == 1  # reading one loss is cheaper than any tensor operation (CPU)
        if math.isfinite(losses[0].item()) if one else bool(torch.isfinite(torch.stack(losses)).all()):
            losses.clear()
            parts.clear()
            return
        s = self.state
        i = int((~torch.isfinite(torch.stack(losses))).nonzero()[0, 0])
        criterion_loss, terms = parts[i] if parts else (losses[i], {})
        culprits = [("criterion", "the criterion's loss", criterion_loss),
                    *((name, f"the loss term of plugin {name!r}", term) for name, term in terms.items())]
        part, what, value = next(((p, w, x) for p, w, v in culprits
                                  if not math.isfinite(x := float(torch.as_tensor(v).detach()))),
                                 ("sum", "the sum of the (finite) criterion's loss and loss terms", float(losses[i])))
        where = {"experience": s.experience.index, "epoch": s.epoch,  # type: ignore[union-attr]
                 "iteration": end - len(losses) + i}
        losses.clear()
        parts.clear()
        if self.on_nonfinite == "raise":
            raise NonFiniteLossError(
                f"the training loss is not finite at experience {where['experience']}, epoch {s.epoch}, iteration "
                f"{where['iteration']}: {what} is {value} (Strategy(on_nonfinite='warn'), or `clkernel run "
                f"--on-nonfinite warn`, trains on)", **where, part=part, value=value)
        if self._warned != (s.experiences_trained, s.epoch):  # the first of the epoch: the others follow from it
            self._warned = (s.experiences_trained, s.epoch)
            log.warning("nonfinite_loss", **where, part=part, value=value)

    def _criterion(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        try:
            return self.state.criterion(output, y)
        except (RuntimeError, IndexError, ValueError) as e:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"the criterion cannot compare the model's output of shape {shape} with targets of shape "
                f"{tuple(y.shape)} (largest class id {int(y.max())}): does the model have enough outputs for "
                f"the benchmark's classes? ({e})") from e

    def _to_device(self, mb: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
        device = self.state.device
        return tuple(v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for v in mb)  # type: ignore

    def _evaluate(self, streams: Iterable[Any]) -> None:
        for stream in streams:
            self.eval(stream)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def eval(self, experiences: Any) -> dict[str, Any]:
        """Evaluate on each experience; inside ``train()`` the training state is restored afterwards.

        :param experiences: as for :meth:`train`.
        :returns: the last value of every metric logged during the call.
        :raises PluginError: when a plugin fails, naming it and the event.
        """
        exps = as_experiences(experiences, "eval")
        s = self.state
        nested = s.is_training
        saved = (s.experience, s.stream_name, s.dataset, s.dataloader, s.mb, s.mb_output, s.epoch_iteration,
                 s.metrics)
        if not nested:
            self._prepare()
        s.is_training, s.metrics, s.stream_name = False, {}, _stream_name(exps[0], "eval")
        c = self.dispatcher.calls
        before_it, before_fw, after_fw, after_it = (c["before_eval_iteration"], c["before_eval_forward"],
                                                    c["after_eval_forward"], c["after_eval_iteration"])
        move = s.device.type != "cpu"
        dynamic = any(isinstance(m, DynamicModule) for m in s.model.modules())
        with eval_mode(s.model):  # each module gets its own mode back after (a plugin may have frozen some)
            try:
                self._fire("before_eval")
                for exp in exps:
                    s.experience, s.stream_name = exp, _stream_name(exp, "eval")
                    log.debug("experience_start", phase="eval", stream=s.stream_name, experience=exp.index)
                    self._fire("before_eval_exp")
                    self._fire("before_eval_dataset_adaptation")
                    s.dataset = exp.dataset.eval()
                    self._fire("after_eval_dataset_adaptation")
                    if dynamic:  # a static model was placed on the device once, at construction
                        adapt_model(s.model, exp, device=s.device).eval()  # modules it created evaluate too
                    s.dataloader = _EpochLoader(s.dataset, s.eval_mb_size, False, None)
                    s.epoch_iteration = 0
                    for mb in s.dataloader:
                        s.mb = self._to_device(mb) if move else mb
                        if before_it: before_it(s)  # noqa: E701
                        if before_fw: before_fw(s)  # noqa: E701
                        s.mb_output = model_forward(s.model, s.mb[0], s.mb[2])
                        if after_fw: after_fw(s)  # noqa: E701
                        s.epoch_iteration += 1
                        if after_it: after_it(s)  # noqa: E701
                    self._fire("after_eval_exp")
                self._fire("after_eval")
                result = dict(s.metrics)
            finally:  # also after a failure: the training fields and the model's mode come back
                (s.experience, s.stream_name, s.dataset, s.dataloader, s.mb, s.mb_output, s.epoch_iteration,
                 s.metrics) = saved
                s.is_training = nested
        if nested:
            s.metrics.update(result)
        return result


class Naive(Strategy):
    """Fine-tuning on each experience in turn, with no continual-learning plugin: the lower bound."""


def run(strategy: Strategy, benchmark: Benchmark, *, train_stream: str = "train",
        eval_streams: str | Iterable[str] = ("test",)) -> dict[str, Any]:
    """Train ``strategy`` on every experience of ``benchmark``'s ``train_stream`` and evaluate its
    ``eval_streams`` as ``strategy.eval_every`` says (default: after each experience, and before the first when
    a plugin asks); then close the strategy (:func:`after_run`, also on error). What ``clkernel run`` does.
    Before :func:`after_run` fires, ``strategy.state.outcome`` says how the run ended (``"completed"``,
    ``"failed"`` or ``"interrupted"``) and ``strategy.state.error`` names the exception, so that loggers record it.

    :param eval_streams: names of streams of ``benchmark`` (``"test"``, ``"valid"``...); one name may be given
        as a string.
    :returns: the last value of every metric logged during the run (numbers, tensors, or whatever the metrics
        logged). ``strategy.close()`` (idempotent) then returns the files the plugins wrote.
    :raises KeyError: naming the stream and the benchmark's streams, for an unknown stream name.
    :raises PluginError, NonFiniteLossError: as :meth:`Strategy.train`; the strategy is closed all the same.
    """
    names = (eval_streams,) if isinstance(eval_streams, str) else tuple(eval_streams)
    streams = [_named_stream(benchmark, name) for name in (train_stream, *names)]
    with strategy:
        return strategy.train(streams[0], eval_streams=streams[1:])


def _outcome_of(exc: BaseException) -> tuple[str, str]:
    """``("interrupted" | "failed", "ExceptionType: message")`` for the exception that ended a run."""
    kind = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    message = str(exc)
    return kind, f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class _EpochLoader:
    """A re-iterable loader: each iteration is one epoch of minibatches over ``dataset``."""

    def __init__(self, dataset: Any, batch_size: int, shuffle: bool, generator: torch.Generator | None) -> None:
        self.dataset, self.batch_size, self.shuffle, self.generator = dataset, batch_size, shuffle, generator

    def __iter__(self) -> Any:
        return iterate_minibatches(self.dataset, self.batch_size, shuffle=self.shuffle, generator=self.generator)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)


def _named_stream(benchmark: Benchmark, name: str) -> Stream:
    if name not in benchmark.streams:
        raise KeyError(f"benchmark {benchmark.name or '(unnamed)'} has no stream {name!r}; streams: "
                       f"{', '.join(benchmark.streams)}")
    return benchmark.streams[name]


def _as_stream(obj: Any) -> Any:
    return obj if isinstance(obj, Stream) else as_experiences(obj, "eval")


def _stream_name(exp: Experience, default: str) -> str:
    return exp.stream.name if exp.stream is not None else default
