"""The training and evaluation loop that fires the events of :mod:`clkernel.hookspecs`.

Plugins are plain objects whose methods are marked with :data:`clkernel.hookimpl`. They are called in the order
the user lists them (pluggy calls the last registered first, so the loop registers them in reverse). Per-iteration
events go through tuples of bound functions built once per ``train()`` / ``eval()`` call from pluggy's own
ordering; an event nobody implements is skipped outright.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import pluggy
import structlog
import torch

from clkernel.data import iterate_minibatches
from clkernel.hookspecs import EVENTS, PROJECT, TrainingEvents
from clkernel.log import configure_logging
from clkernel.state import TrainState
from clkernel.types import Experience, as_experiences

__all__ = ["CompositionError", "DynamicModule", "Naive", "PluginError", "Strategy", "update_optimizer"]

log = structlog.get_logger("clkernel")


@runtime_checkable
class DynamicModule(Protocol):
    """A module that changes its structure for each experience (new heads, new units, new columns).

    The loop calls ``adaptation(experience)`` on every submodule that has it, before each training and each
    evaluation experience (``module.training`` tells which), then :func:`update_optimizer`. Adaptation must be
    idempotent: a second call for the same experience changes nothing.

    A model whose ``forward`` needs the task labels sets the class attribute ``takes_task_labels = True``: the
    loop then calls ``model(x, t)`` instead of ``model(x)``.
    """

    def adaptation(self, experience: Experience) -> None: ...


class PluginError(RuntimeError):
    """An exception raised inside a plugin, with the plugin and the event that were running."""

    def __init__(self, plugin: str, event: str, error: BaseException) -> None:
        super().__init__(f"plugin {plugin!r} failed in event {event!r}: {type(error).__name__}: {error}")
        self.plugin, self.event = plugin, event


class CompositionError(ValueError):
    """A strategy cannot be composed from the plugins it was given."""


def update_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Make ``optimizer`` train exactly ``model``'s parameters, keeping the state (momentum...) of the old ones.

    New parameters join the first parameter group; parameters gone from the model leave the optimizer.
    """
    current = list(model.parameters())
    alive = {id(p) for p in current}
    known: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in alive:
                optimizer.state.pop(p, None)
        group["params"] = [p for p in group["params"] if id(p) in alive]
        known.update(id(p) for p in group["params"])
    optimizer.param_groups[0]["params"].extend(p for p in current if id(p) not in known)


def _plugin_name(plugin: Any, taken: set[str]) -> str:
    base = getattr(plugin, "name", None) or type(plugin).__name__
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    taken.add(name)
    return name


Dispatch = Callable[[TrainState], None]


class Strategy:
    """The continual-learning loop: ``train(experiences)`` then ``eval(stream)``, firing events for plugins.

    :param plugins: objects implementing events, called in this order.
    :param eval_every: -1: evaluate ``eval_streams`` never during training; 0: after each training experience;
        k > 0: also every k epochs.
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
        eval_every: int = -1,
        generator: torch.Generator | None = None,
    ) -> None:
        for option, value in (("train_mb_size", train_mb_size), ("train_epochs", train_epochs),
                              ("eval_mb_size", eval_mb_size or train_mb_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a positive integer, got {value!r}")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if not structlog.is_configured():
            configure_logging()
        self.plugins = list(plugins)
        self.eval_every = eval_every
        self.generator = generator
        self.plugin_manager = self._compose(self.plugins)
        self.state = TrainState(
            model=model.to(device), optimizer=optimizer, criterion=criterion or torch.nn.CrossEntropyLoss(),
            device=device, train_mb_size=train_mb_size, train_epochs=train_epochs,
            eval_mb_size=eval_mb_size or train_mb_size, emit=self._emit_metrics,
        )
        self._calls: dict[str, Dispatch | None] = {}
        self._loss_terms: tuple[tuple[str, Callable[..., Any]], ...] = ()

    # ------------------------------------------------------------------ composition

    @staticmethod
    def _compose(plugins: list[Any]) -> pluggy.PluginManager:
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(TrainingEvents)
        taken: set[str] = set()
        for plugin in reversed(plugins):  # pluggy calls last-registered first
            name = _plugin_name(plugin, taken)
            try:
                pm.register(plugin, name=name)
            except (pluggy.PluginValidationError, ValueError) as e:
                raise CompositionError(f"plugin {name!r} cannot be used: {e}") from e
            impls = [hc.name for hc in pm.get_hookcallers(plugin) or []]
            unknown = [n for n in impls if n not in EVENTS]
            if unknown:
                hint = difflib.get_close_matches(unknown[0], EVENTS, n=1)
                raise CompositionError(
                    f"plugin {name!r} implements {unknown[0]!r}, which is not a clkernel event"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "; `clkernel hooks` lists the events"))
            if not impls:
                raise CompositionError(f"plugin {name!r} implements no clkernel event: mark its methods with "
                                       f"@clkernel.hookimpl")
        pm.check_pending()
        return pm

    def _dispatch(self, event: str) -> Dispatch | None:
        """One callable that runs ``event``'s implementations in order, or None when there are none."""
        caller = getattr(self.plugin_manager.hook, event)
        impls = caller.get_hookimpls()
        if not impls:
            return None
        traced = self.plugin_manager._inner_hookexec is not pluggy._callers._multicall
        if traced or any(i.hookwrapper or i.wrapper for i in impls):
            return lambda state: caller(state=state)
        ordered = tuple(reversed(impls))
        fns = tuple(i.function if i.argnames else (lambda s, f=i.function: f()) for i in ordered)

        def call(state: TrainState) -> None:
            for fn in fns:
                try:
                    fn(state)
                except Exception as e:
                    raise PluginError(ordered[fns.index(fn)].plugin_name, event, e) from e

        return call

    def _prepare(self) -> None:
        self._calls = {event: self._dispatch(event) for event in EVENTS if event not in ("loss_terms", "log_metrics")}
        self._loss_terms = tuple((i.plugin_name, i.function)
                                 for i in reversed(self.plugin_manager.hook.loss_terms.get_hookimpls()))

    def _fire(self, event: str) -> None:
        call = self._calls.get(event)
        if call is not None:
            call(self.state)

    def _emit_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        kwargs = {"state": state, "values": values}
        for impl in reversed(self.plugin_manager.hook.log_metrics.get_hookimpls()):
            try:
                impl.function(*(kwargs[a] for a in impl.argnames))
            except Exception as e:
                raise PluginError(impl.plugin_name, "log_metrics", e) from e

    # ------------------------------------------------------------------ model adaptation

    def _adapt_model(self, experience: Experience) -> None:
        model = self.state.model
        for module in list(model.modules()):
            if isinstance(module, DynamicModule):
                module.adaptation(experience)
        model.to(self.state.device)
        if self.state.is_training:
            update_optimizer(self.state.optimizer, model)

    def _forward(self, model: torch.nn.Module, mb: tuple[Any, torch.Tensor, torch.Tensor]) -> Any:
        if getattr(model, "takes_task_labels", False):
            return model(mb[0], mb[2])
        return model(mb[0])

    def _to_device(self, mb: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
        device = self.state.device
        return tuple(v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for v in mb)  # type: ignore

    # ------------------------------------------------------------------ training

    def train(self, experiences: Any, eval_streams: Iterable[Any] | None = None) -> dict[str, Any]:
        """Train on each experience in turn; evaluate ``eval_streams`` as ``eval_every`` says.

        :returns: the last value of every metric logged during the call.
        """
        exps = as_experiences(experiences, "train")
        streams = [as_experiences(s, "eval") for s in (eval_streams or [])]
        s = self.state
        self._prepare()
        s.metrics, s.is_training, s.stream_name = {}, True, _stream_name(exps[0], "train")
        self._fire("before_training")
        for exp in exps:
            self._train_experience(exp, streams)
        self._fire("after_training")
        return dict(s.metrics)

    def _train_experience(self, exp: Experience, eval_streams: list[list[Experience]]) -> None:
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
        self._adapt_model(exp)
        for s.epoch in range(s.train_epochs):
            s.model.train()
            self._fire("before_training_epoch")
            self._train_epoch()
            self._fire("after_training_epoch")
            if self.eval_every > 0 and (s.epoch + 1) % self.eval_every == 0 and s.epoch + 1 < s.train_epochs:
                self._periodic_eval(eval_streams)
            if s.stop_training:
                break
        s.experiences_trained += 1
        self._fire("after_training_exp")
        log.info("experience_end", phase="train", experience=exp.index, epochs=s.epoch + 1)
        if self.eval_every >= 0:
            self._periodic_eval(eval_streams)

    def _train_epoch(self) -> None:
        s, c = self.state, self._calls
        before_it, before_fw, after_fw = c["before_training_iteration"], c["before_forward"], c["after_forward"]
        before_bw, after_bw = c["before_backward"], c["after_backward"]
        before_up, after_up, after_it = c["before_update"], c["after_update"], c["after_training_iteration"]
        terms_fns, model, optimizer = self._loss_terms, s.model, s.optimizer
        move = s.device.type != "cpu"
        s.epoch_iteration = 0
        for mb in s.dataloader:  # type: ignore[union-attr]
            s.mb = self._to_device(mb) if move else mb
            if before_it: before_it(s)  # noqa: E701
            optimizer.zero_grad(set_to_none=True)
            if before_fw: before_fw(s)  # noqa: E701
            s.mb_output = self._forward(model, s.mb)
            if after_fw: after_fw(s)  # noqa: E701
            loss = self._criterion(s.mb_output, s.mb[1])
            if terms_fns:
                s.loss_terms = terms = {}
                for name, fn in terms_fns:
                    try:
                        term = fn(s)
                    except Exception as e:
                        raise PluginError(name, "loss_terms", e) from e
                    if term is not None:
                        terms[name] = term
                        loss = loss + term
            s.loss = loss
            if before_bw: before_bw(s)  # noqa: E701
            s.loss.backward()
            if after_bw: after_bw(s)  # noqa: E701
            if before_up: before_up(s)  # noqa: E701
            optimizer.step()
            if after_up: after_up(s)  # noqa: E701
            s.iteration += 1
            s.epoch_iteration += 1
            if after_it: after_it(s)  # noqa: E701

    def _criterion(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        try:
            return self.state.criterion(output, y)
        except (RuntimeError, IndexError, ValueError) as e:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"the criterion cannot compare the model's output of shape {shape} with targets of shape "
                f"{tuple(y.shape)} (largest class id {int(y.max())}): does the model have enough outputs for "
                f"the benchmark's classes? ({e})") from e

    def _periodic_eval(self, eval_streams: list[list[Experience]]) -> None:
        for stream in eval_streams:
            self.eval(stream)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def eval(self, experiences: Any) -> dict[str, Any]:
        """Evaluate on each experience; inside ``train()`` the training state is restored afterwards.

        :returns: the last value of every metric logged during the call.
        """
        exps = as_experiences(experiences, "eval")
        s = self.state
        nested = s.is_training
        saved = (s.experience, s.stream_name, s.dataset, s.dataloader, s.mb, s.mb_output, s.epoch_iteration,
                 s.metrics)
        if not nested:
            self._prepare()
        s.is_training, s.metrics, s.stream_name = False, {}, _stream_name(exps[0], "eval")
        was_training = s.model.training
        s.model.eval()
        c = self._calls
        before_it, before_fw, after_fw, after_it = (c["before_eval_iteration"], c["before_eval_forward"],
                                                    c["after_eval_forward"], c["after_eval_iteration"])
        move = s.device.type != "cpu"
        self._fire("before_eval")
        for exp in exps:
            s.experience, s.stream_name = exp, _stream_name(exp, "eval")
            log.debug("experience_start", phase="eval", stream=s.stream_name, experience=exp.index)
            self._fire("before_eval_exp")
            self._fire("before_eval_dataset_adaptation")
            s.dataset = exp.dataset.eval()
            self._fire("after_eval_dataset_adaptation")
            self._adapt_model(exp)
            s.dataloader = _EpochLoader(s.dataset, s.eval_mb_size, False, None)
            s.epoch_iteration = 0
            for mb in s.dataloader:
                s.mb = self._to_device(mb) if move else mb
                if before_it: before_it(s)  # noqa: E701
                if before_fw: before_fw(s)  # noqa: E701
                s.mb_output = self._forward(s.model, s.mb)
                if after_fw: after_fw(s)  # noqa: E701
                s.epoch_iteration += 1
                if after_it: after_it(s)  # noqa: E701
            self._fire("after_eval_exp")
        self._fire("after_eval")
        result = dict(s.metrics)
        (s.experience, s.stream_name, s.dataset, s.dataloader, s.mb, s.mb_output, s.epoch_iteration,
         s.metrics) = saved
        if nested:
            s.metrics.update(result)
        s.is_training = nested
        s.model.train(was_training)
        return result


class Naive(Strategy):
    """Fine-tuning on each experience in turn, with no continual-learning plugin: the lower bound."""


class _EpochLoader:
    """A re-iterable loader: each iteration is one epoch of minibatches over ``dataset``."""

    def __init__(self, dataset: Any, batch_size: int, shuffle: bool, generator: torch.Generator | None) -> None:
        self.dataset, self.batch_size, self.shuffle, self.generator = dataset, batch_size, shuffle, generator

    def __iter__(self) -> Any:
        return iterate_minibatches(self.dataset, self.batch_size, shuffle=self.shuffle, generator=self.generator)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)


def _stream_name(exp: Experience, default: str) -> str:
    return exp.stream.name if exp.stream is not None else default
