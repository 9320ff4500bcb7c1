"""The training and evaluation loop: the pseudocode at the top of :mod:`clkernel.hookspecs`, in Python.

Composition and dispatch live in :mod:`clkernel.dispatch`; this module only fires events in order. Per-iteration
events go through callables built once per ``train()`` / ``eval()`` call; an event nobody implements is skipped.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from clkernel.log import describe_exception, get_logger
import torch

from clkernel.data import RESERVED_LOADER_OPTIONS, EpochLoader, set_batch_reader_options
from clkernel.dispatch import Dispatcher, PluginError, compose
from clkernel.modules import DynamicModule, adapt_model, eval_mode, model_forward, update_optimizer
from clkernel.state import TrainState
from clkernel.types import Benchmark, Experience, Stream, as_experiences
from clkernel.validate import non_negative_int, positive_int

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
    :param loader_options: keyword arguments of the ``torch.utils.data.DataLoader`` that reads datasets which
        are not in memory (an image folder): ``num_workers``, ``pin_memory``, ``persistent_workers``,
        ``prefetch_factor``...; in-memory tensors are gathered a minibatch at a time and ignore them.
    :param ddp_options: keyword arguments of ``torch.nn.parallel.DistributedDataParallel`` on several processes;
        ``find_unused_parameters`` defaults to True for a model with a dynamic module (the heads of other tasks
        get no gradient) and False otherwise.
    :param checkpoint: a :class:`~clkernel.checkpoint.Checkpointer`: write checkpoints as it says (every N
        iterations, every M minutes, at the end of every training experience, on request); default none.
    :param trace: dispatch every event through pluggy's hook calls, so that
        ``strategy.plugin_manager.add_hookcall_monitoring`` sees them (slower).
    :param on_nonfinite: what a training loss that is nan or inf does: ``"raise"`` (the default) ends
        ``train()`` with :class:`NonFiniteLossError`, naming the experience, epoch and iteration of the first such
        minibatch and the part of the loss (the criterion's, or which plugin's loss term) that was not finite;
        ``"warn"`` logs that as a ``nonfinite_loss`` warning, once per epoch, and trains on. On CPU the loss is
        checked at every iteration, before ``loss.backward()``; on other devices, so as not to wait for the
        device at every minibatch, every 1024 iterations (:data:`NONFINITE_CHECK_EVERY`) and at each epoch's end,
        before :func:`after_training_epoch`: the iterations after the first non-finite one run until then.
    :raises ValueError: for a size or epoch count that is not a positive integer, ``eval_every < -1``, an
        ``on_nonfinite`` other than ``"raise"`` or ``"warn"``, a ``loader_options`` / ``ddp_options`` key
        that the DataLoader / DistributedDataParallel does not take (or that the loop sets itself), or a
        ``num_workers`` that is not a non-negative integer.
    :raises TypeError: when ``model`` is not a module.
    :raises CompositionError: when a plugin cannot be composed (see :func:`clkernel.dispatch.compose`).

    On several processes (a ``torch.distributed`` process group initialised, e.g. by ``torchrun``) the rank and
    world size come from it; training runs the model wrapped in ``DistributedDataParallel`` (wrapped again at
    each experience, after dynamic modules adapted), each rank trains on its shard of every experience and
    evaluates its shard of every evaluation experience (:class:`~clkernel.data.EpochLoader`), minibatch sizes
    are per rank, and the default device is the process's current CUDA device. ``state.model`` stays the plain
    module. See :mod:`clkernel.distributed`.
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
        checkpoint: Any = None,
        loader_options: Mapping[str, Any] | None = None,
        ddp_options: Mapping[str, Any] | None = None,
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
        from clkernel import distributed

        rank, world_size, self._distributed = distributed.rank(), distributed.world_size(), distributed.is_distributed()
        if device is None and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device()) if self._distributed else "cuda"
        device = torch.device(device or "cpu")
        self.loader_options = _options(loader_options, torch.utils.data.DataLoader, "loader_options",
                                       RESERVED_LOADER_OPTIONS)
        if "num_workers" in self.loader_options:
            non_negative_int(self.loader_options["num_workers"], "loader_options num_workers", "Strategy")
        self.ddp_options = _options(ddp_options, torch.nn.parallel.DistributedDataParallel, "ddp_options",
                                    ("module", "device_ids", "output_device"))
        self.plugins = list(plugins)
        self.eval_every = eval_every
        self.generator = generator
        self.on_nonfinite = on_nonfinite
        self._check_every = NONFINITE_CHECK_EVERY.get(device.type, NONFINITE_CHECK_EVERY["default"])
        self._warned: tuple[int, int] | None = None  # (experiences_trained, epoch) of the last nonfinite_loss warning
        self.plugin_manager = compose(self.plugins, distributed=world_size > 1)
        self.plugin_names = [self.plugin_manager.get_name(p) for p in self.plugins]
        self.checkpoint = checkpoint
        self.dispatcher = Dispatcher(self.plugin_manager, rank=rank, trace=trace)
        self.state = TrainState(
            model=model.to(device), optimizer=optimizer, criterion=criterion or torch.nn.CrossEntropyLoss(),
            device=device, train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
            rank=rank, world_size=world_size, emit=self._emit_metrics,
        )
        self._log_metrics: tuple[tuple[str, Callable[..., Any]], ...] = ()
        self._loss_terms: tuple[tuple[str, Callable[..., Any]], ...] = ()
        self._started = self._closed = self._initial_eval_asked = self._in_experience = False
        self._output_files: list[Path] = []
        self._resume: dict[str, Any] | None = None  # the position a loaded checkpoint resumes from
        self._loader: EpochLoader | None = None
        self._skip = 0  # minibatches of the next epoch already trained (resuming inside it)
        self._train_model: torch.nn.Module = model  # what training calls: the model, or its DDP wrapper

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
        if self._loader is not None:  # a run that stopped inside an experience: its loader's workers stop
            self._loader.close()
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
        with self._batch_reader():
            return self._train(experiences, eval_streams)

    @contextlib.contextmanager
    def _batch_reader(self) -> Iterator[None]:
        """While this strategy trains or evaluates, data read by ``get_batch`` (a replay buffer over files) is read
        with its ``loader_options`` workers, as its training data; the previous options come back afterwards."""
        previous = set_batch_reader_options(self.loader_options) if self.loader_options else None
        try:
            yield
        finally:
            if previous is not None:
                set_batch_reader_options(previous)

    def _train(self, experiences: Any, eval_streams: Iterable[Any] | None) -> dict[str, Any]:
        resume, self._resume = self._resume, None
        exps = as_experiences(experiences, "train") if experiences or resume is None else []
        s = self.state
        s.eval_streams = tuple(_as_stream(x) for x in (eval_streams or ()))
        self._prepare()
        s.is_training, s.stream_name = True, _stream_name(exps[0], "train") if exps else "train"
        if resume is None or resume["stage"] == "start":
            s.metrics = {}
            self._fire("before_training")
        elif resume["stage"] == "eval" and self.eval_every >= 0:  # the checkpoint came before this evaluation
            self._evaluate(s.eval_streams)
        if not self._initial_eval_asked and s.experiences_trained == 0:
            self._initial_eval_asked = True
            if any(asked for _, asked in self.dispatcher.collect("needs_initial_eval", state=s)):
                if not s.eval_streams:
                    log.warning("initial_eval_skipped", reason="a plugin asked for an evaluation before training, "
                                "but train() was given no eval_streams")
                self._evaluate(s.eval_streams)
        for i, exp in enumerate(exps):
            self._train_experience(exp, resume if i == 0 and resume and resume["stage"] == "train" else None)
        self._fire("after_training")
        return dict(s.metrics)

    def _train_experience(self, exp: Experience, resume: dict[str, Any] | None = None) -> None:
        """Train one experience; ``resume`` (a loaded checkpoint's position inside it) re-enters it where the
        checkpoint was taken: the events that fired before it do not fire again, except the dataset adaptation
        pair (with ``state.resuming`` set), which builds ``state.dataset`` again."""
        s, ck = self.state, self.checkpoint
        s.experience, s.stream_name, s.epoch, s.stop_training = exp, _stream_name(exp, "train"), 0, False
        log.info("experience_start", phase="train", experience=exp.index, classes=exp.classes,
                 samples=len(exp.dataset), resumed=resume is not None)
        s.model.train()
        if resume is None:
            self._fire("before_training_exp")
        s.resuming = resume is not None
        self._fire("before_train_dataset_adaptation")
        s.dataset = exp.dataset.train()
        self._fire("after_train_dataset_adaptation")
        s.resuming = False
        s.dataloader = self._loader = EpochLoader(s.dataset, s.train_mb_size, True, self.generator, rank=s.rank,
                                                  world_size=s.world_size, loader_options=self.loader_options)
        adapt_model(s.model, exp, optimizer=s.optimizer, device=s.device)
        self._train_model = self._wrap(s.model) if self._distributed else s.model
        first = 0
        if resume is not None:  # the epoch in progress: its order again, from the next minibatch on
            first, self._skip = resume["epoch"], resume["iteration"]
            self._loader.resume = (resume["iteration"], resume["epoch_rng"])
            for name, module in s.model.named_modules():  # modes plugins set when the experience began
                module.training = resume["modes"].get(name, module.training)
        self._in_experience = True
        if ck is not None:
            ck.deferrable = True
        for s.epoch in range(first, s.train_epochs):  # modules keep the modes set above for the whole experience
            if resume is None or s.epoch > first:
                self._fire("before_training_epoch")
            self._train_epoch()
            self._fire("after_training_epoch")
            if self.eval_every > 0 and (s.epoch + 1) % self.eval_every == 0 and s.epoch + 1 < s.train_epochs:
                self._evaluate(s.eval_streams)
            if s.stop_training:
                break
        s.experiences_trained += 1
        self._fire("after_training_exp")
        self._loader.close()  # its persistent workers, if any
        self._in_experience = False
        log.info("experience_end", phase="train", experience=exp.index, epochs=s.epoch + 1)
        if ck is not None:  # always at an experience's end, before its evaluation
            self._save({"experience": s.experiences_trained, "epoch": 0, "iteration": 0, "stage": "eval"})
        if self.eval_every >= 0:
            self._evaluate(s.eval_streams)

    def _train_epoch(self) -> None:
        s, c = self.state, self.dispatcher.calls
        before_it, before_fw, after_fw = c["before_training_iteration"], c["before_forward"], c["after_forward"]
        before_bw, after_bw = c["before_backward"], c["after_backward"]
        before_up, after_up, after_it = c["before_update"], c["after_update"], c["after_training_iteration"]
        terms_fns, model, optimizer, ck = self._loss_terms, self._train_model, s.optimizer, self.checkpoint
        move = s.device.type != "cpu"
        check_every, losses, parts = self._check_every, [], []  # the unchecked losses, and their parts
        s.epoch_iteration, self._skip = self._skip, 0
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
            if ck is not None and (ck.requested is not None or ck.due(s.iteration)):
                if losses:
                    self._check_finite(losses, parts, s.epoch_iteration)
                self._save()
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

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in ``DistributedDataParallel`` (which ignores frozen parameters); ``model`` itself when
        nothing in it trains. Built afresh for each experience, as adaptation may have added parameters."""
        if not any(p.requires_grad for p in model.parameters()):
            return model
        options = {"find_unused_parameters": any(isinstance(m, DynamicModule) for m in model.modules()),
                   **self.ddp_options}
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.state.device] if self.state.device.type == "cuda" else None, **options)
        ddp.takes_task_labels = getattr(model, "takes_task_labels", False)  # model_forward reads it
        return ddp

    def _to_device(self, mb: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
        device = self.state.device
        return tuple(v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for v in mb)  # type: ignore

    def _evaluate(self, streams: Iterable[Any]) -> None:
        for stream in streams:
            self.eval(stream)

    # ------------------------------------------------------------------ checkpoints

    def _save(self, position: dict[str, Any] | None = None) -> None:
        ck = self.checkpoint
        if self.state.rank == 0:  # the other ranks hold the same state
            log.debug("checkpoint", path=str(ck.save(self, position)), iteration=self.state.iteration)
        if position is not None:
            ck.deferrable = False
        if ck.requested is not None:  # a signal asked for this checkpoint: the run ends now
            exc, ck.requested, ck.deferrable = ck.requested, None, False
            raise exc

    @property
    def position(self) -> dict[str, Any]:
        """Where the run stands, as a checkpoint records it: ``{"experience": experiences trained, "epoch",
        "iteration" (within the epoch), "stage"}``; stage ``"train"`` inside a training experience (between two
        iterations), else ``"start"`` with epoch and iteration 0."""
        s = self.state
        if self._in_experience:
            return {"experience": s.experiences_trained, "epoch": s.epoch, "iteration": s.epoch_iteration,
                    "stage": "train"}
        return {"experience": s.experiences_trained, "epoch": 0, "iteration": 0, "stage": "start"}

    @property
    def resume_position(self) -> dict[str, Any] | None:
        """The position a loaded checkpoint resumes from (until training resumes), else None."""
        return None if self._resume is None else {k: self._resume[k] for k in ("experience", "epoch",
                                                                                "iteration", "stage")}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain containers: ``plugin_names`` (all, in order),
        ``model`` and ``optimizer`` (their ``state_dict()``), ``plugins`` (name -> ``state_dict()`` of every
        plugin that has one; the others are stateless), ``loop`` (counters, :attr:`position`, the shuffle state
        of the epoch in progress, module modes, outcome, the metrics' last values) and ``rng`` (every random
        generator, :func:`clkernel.checkpoint.rng_state`). Tensors are the live ones, as ``Module.state_dict()``
        gives them: save (:func:`clkernel.save_checkpoint`) or copy the result before training goes on."""
        from clkernel.checkpoint import rng_state

        s = self.state
        loop = {"position": self.position, "experiences_trained": s.experiences_trained, "iteration": s.iteration,
                "train_mb_size": s.train_mb_size, "train_epochs": s.train_epochs,
                "world_size": s.world_size,
                "epoch_rng": self._loader.epoch_state if self._in_experience and self._loader else None,
                "modes": {name: m.training for name, m in s.model.named_modules()},
                "initial_eval_asked": self._initial_eval_asked, "warned": self._warned and list(self._warned),
                "outcome": s.outcome, "error": s.error,
                "metrics": {k: v for k, v in s.metrics.items() if isinstance(v, (int, float, str, torch.Tensor))}}
        return {"plugin_names": list(self.plugin_names), "model": s.model.state_dict(),
                "optimizer": s.optimizer.state_dict(), "loop": loop, "rng": rng_state(self.generator),
                "plugins": {name: plugin.state_dict() for name, plugin in zip(self.plugin_names, self.plugins)
                            if _stateful(plugin)}}

    def load_state_dict(self, state: Any) -> None:
        """Load what :meth:`state_dict` returned into this strategy, built as the one that gave it (the same
        plugins in the same order, the same model and optimizer types), before it trains; the next ``train()``
        continues from the state's position. Everything is checked first (plugin list, model and optimizer on
        copies); a plugin whose ``load_state_dict`` raises has the plugins loaded before it put back.

        :raises ValueError: naming what does not fit: a missing or extra plugin, a model parameter of another
            shape, another optimizer layout, another minibatch size or epoch count inside an experience, or a
            plugin that refused its state.
        """
        s = self.state
        missing = [k for k in ("plugin_names", "model", "optimizer", "plugins", "loop", "rng")
                   if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"the state has no {missing[0]!r} entry: it is not a Strategy.state_dict()")
        saved, names = list(state["plugin_names"]), self.plugin_names
        gone, extra = [n for n in saved if n not in names], [n for n in names if n not in saved]
        listing = f"(checkpoint: {', '.join(saved) or 'none'}; strategy: {', '.join(names) or 'none'})"
        if gone:
            raise ValueError(f"plugin {gone[0]!r} of the checkpoint's run is missing from this strategy {listing}")
        if extra:
            raise ValueError(f"plugin {extra[0]!r} of this strategy is extra: the checkpoint's run had no such "
                             f"plugin {listing}")
        if saved != names:
            raise ValueError(f"the plugins are in another order than in the checkpoint's run {listing}")
        for name, plugin in zip(names, self.plugins):
            if _stateful(plugin) != (name in state["plugins"]):
                raise ValueError(f"plugin {name!r} " + ("has state_dict() but the checkpoint holds no state for it"
                                 if _stateful(plugin) else "keeps no state but the checkpoint holds some for it"))
        loop, position = state["loop"], state["loop"]["position"]
        if position["stage"] == "train":
            if loop["train_epochs"] != s.train_epochs:
                raise ValueError(f"the checkpoint was taken inside an experience with train_epochs="
                                 f"{loop['train_epochs']}; this strategy has train_epochs={s.train_epochs}")
            saved_world = int(loop.get("world_size", 1))  # absent from checkpoints written before distributed runs
            if loop["train_mb_size"] * saved_world != s.train_mb_size * s.world_size:
                raise ValueError(
                    f"the checkpoint was taken inside an experience with a global minibatch of "
                    f"{loop['train_mb_size'] * saved_world} (train_mb_size={loop['train_mb_size']} on "
                    f"{saved_world} process(es)); this strategy has {s.train_mb_size * s.world_size} "
                    f"(train_mb_size={s.train_mb_size} on {s.world_size})")
        if (state["rng"].get("generator") is None) != (self.generator is None):
            raise ValueError("the checkpoint's run shuffled minibatches with " + (
                "torch's global generator, this strategy with its own" if self.generator is not None else
                "its own generator (Strategy(generator=...)), this strategy with torch's global one"))
        _check_model(s.model, s.optimizer, state["model"], state["optimizer"])
        done: list[tuple[Any, Any]] = []
        for name, plugin in zip(names, self.plugins):
            if name in state["plugins"]:
                before = plugin.state_dict()
                try:
                    plugin.load_state_dict(state["plugins"][name])
                except Exception as e:
                    for other, other_state in reversed(done):  # put the plugins loaded so far back
                        other.load_state_dict(other_state)
                    raise ValueError(f"plugin {name!r} refused its state: {type(e).__name__}: {e}") from e
                done.append((plugin, before))
        s.model.load_state_dict(state["model"])
        update_optimizer(s.optimizer, s.model)
        s.optimizer.load_state_dict(state["optimizer"])
        s.experiences_trained, s.iteration = int(loop["experiences_trained"]), int(loop["iteration"])
        s.outcome, s.error, s.metrics = loop["outcome"], loop["error"], dict(loop["metrics"])
        self._initial_eval_asked = bool(loop["initial_eval_asked"])
        self._warned = tuple(loop["warned"]) if loop["warned"] else None  # type: ignore[assignment]
        from clkernel.checkpoint import restore_rng_state

        restore_rng_state(state["rng"], self.generator)
        self._resume = {**position, "epoch_rng": loop["epoch_rng"], "modes": dict(loop["modes"])}

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def eval(self, experiences: Any) -> dict[str, Any]:
        """Evaluate on each experience; inside ``train()`` the training state is restored afterwards.

        :param experiences: as for :meth:`train`.
        :returns: the last value of every metric logged during the call.
        :raises PluginError: when a plugin fails, naming it and the event.
        """
        with self._batch_reader():
            return self._eval(experiences)

    def _eval(self, experiences: Any) -> dict[str, Any]:
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
                    s.dataloader = EpochLoader(s.dataset, s.eval_mb_size, False, rank=s.rank, world_size=s.world_size,
                                               loader_options=self.loader_options)
                    s.epoch_iteration = 0
                    for mb in s.dataloader:
                        s.mb = self._to_device(mb) if move else mb
                        if before_it: before_it(s)  # noqa: E701
                        if before_fw: before_fw(s)  # noqa: E701
                        s.mb_output = model_forward(s.model, s.mb[0], s.mb[2])
                        if after_fw: after_fw(s)  # noqa: E701
                        s.epoch_iteration += 1
                        if after_it: after_it(s)  # noqa: E701
                    s.dataloader.close()
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
        eval_streams: str | Iterable[str] = ("test",), resume_from: str | Path | None = None) -> dict[str, Any]:
    """Train ``strategy`` on every experience of ``benchmark``'s ``train_stream`` and evaluate its
    ``eval_streams`` as ``strategy.eval_every`` says (default: after each experience, and before the first when
    a plugin asks); then close the strategy (:func:`after_run`, also on error). What ``clkernel run`` does.
    Before :func:`after_run` fires, ``strategy.state.outcome`` says how the run ended (``"completed"``,
    ``"failed"`` or ``"interrupted"``) and ``strategy.state.error`` names the exception, so that loggers record it.

    :param eval_streams: names of streams of ``benchmark`` (``"test"``, ``"valid"``...); one name may be given
        as a string.
    :param resume_from: a checkpoint file (:func:`clkernel.load_checkpoint` loads it first): the run continues
        from its position. A strategy that loaded a checkpoint itself also continues from it.
    :returns: the last value of every metric logged during the run (numbers, tensors, or whatever the metrics
        logged). ``strategy.close()`` (idempotent) then returns the files the plugins wrote.
    :raises KeyError: naming the stream and the benchmark's streams, for an unknown stream name.
    :raises PluginError: as :meth:`Strategy.train`; the strategy is closed all the same.
    :raises NonFiniteLossError: as :meth:`Strategy.train`; the strategy is closed all the same.
    :raises CheckpointError: for a checkpoint that cannot be loaded (the strategy is then left as it was).
    """
    names = (eval_streams,) if isinstance(eval_streams, str) else tuple(eval_streams)
    streams = [_named_stream(benchmark, name) for name in (train_stream, *names)]
    if resume_from is not None:
        from clkernel.checkpoint import load_checkpoint

        load_checkpoint(resume_from, strategy)
    start = strategy.resume_position["experience"] if strategy.resume_position else 0
    with strategy:
        return strategy.train(list(streams[0])[start:], eval_streams=streams[1:])


def _outcome_of(exc: BaseException) -> tuple[str, str]:
    """``("interrupted" | "failed", "ExceptionType: message")`` for the exception that ended a run."""
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", describe_exception(exc)


def _options(options: Mapping[str, Any] | None, target: Any, what: str, reserved: tuple[str, ...]) -> dict[str, Any]:
    """``options`` as a dict, every key a keyword of ``target`` that the loop does not set itself."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"Strategy: {what} must be a mapping of keyword arguments, got {type(options).__name__}")
    accepted = set(inspect.signature(target).parameters) - set(reserved)
    for key in options:
        if key not in accepted:
            raise ValueError(f"Strategy: {what} has {key!r}, which {target.__name__} does not take"
                             + (" (the loop sets it)" if key in reserved else "")
                             + f"; it takes: {', '.join(sorted(accepted))}")
    return dict(options)


def _stateful(plugin: Any) -> bool:
    return callable(getattr(plugin, "state_dict", None)) and callable(getattr(plugin, "load_state_dict", None))


def _check_model(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: Any,
                 optimizer_state: Any) -> None:
    """Load the states into copies of the model and optimizer (dynamic modules rebuild their structure), so
    that a mismatch is found before anything changes; raise ValueError naming the parameter."""
    try:
        model, optimizer = copy.deepcopy((model, optimizer))
    except Exception:  # noqa: BLE001 - a model that cannot be copied is checked by the load itself
        return
    try:
        model.load_state_dict(model_state)
    except RuntimeError as e:  # torch names the parameters: the first one is enough
        lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()] or [str(e)]
        raise ValueError(f"the model does not fit: {lines[0][:300]}") from None
    update_optimizer(optimizer, model)
    groups = optimizer_state.get("param_groups") if isinstance(optimizer_state, dict) else None
    if not groups or not set(optimizer.defaults) <= set(groups[0]):  # another type (schedulers add keys)
        raise ValueError(f"the optimizer does not fit: the checkpoint's is not a {type(optimizer).__name__} "
                         f"with the same options")
    try:
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"the optimizer does not fit: {' '.join(str(e).split())}") from None


def _named_stream(benchmark: Benchmark, name: str) -> Stream:
    if name not in benchmark.streams:
        raise KeyError(f"benchmark {benchmark.name or '(unnamed)'} has no stream {name!r}; streams: "
                       f"{', '.join(benchmark.streams)}")
    return benchmark.streams[name]


def _as_stream(obj: Any) -> Any:
    return obj if isinstance(obj, Stream) else as_experiences(obj, "eval")


def _stream_name(exp: Experience, default: str) -> str:
    return exp.stream.name if exp.stream is not None else default
