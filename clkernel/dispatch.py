"""Composition and dispatch: plugins become one pluggy plugin manager, events become prebuilt calls.

Only pluggy's public API is used: :meth:`pluggy.PluginManager.register`, ``check_pending``, ``get_hookcallers``
and :meth:`pluggy.HookCaller.get_hookimpls`. For each event, :class:`Dispatcher` builds one callable from the
implementations, in the order the user listed the plugins, that names the failing plugin on error
(:class:`PluginError`); events nobody implements become None and cost nothing. With ``trace=True``, or when a
plugin implements an event as a hook wrapper, the event goes through pluggy's own hook call instead, so that
``plugin_manager.add_hookcall_monitoring`` and ``enable_tracing`` see it, and a plugin's exception arrives as
pluggy raises it. Events whose results are collected (``SPEC[event].result``) and ``log_metrics`` are always
called directly, in plugin order; hook wrappers on them are rejected at composition.
"""

from __future__ import annotations

import difflib
import inspect
from typing import TYPE_CHECKING, Any, Callable, Iterable

import pluggy

from clkernel.hookspecs import EVENTS, PROJECT, SPEC, TrainingEvents

if TYPE_CHECKING:
    from clkernel.state import TrainState

__all__ = ["CompositionError", "Dispatcher", "PluginError", "compose", "plugin_name"]

Dispatch = Callable[["TrainState"], None]


class PluginError(RuntimeError):
    """An exception raised inside a plugin, with the plugin (``.plugin``) and the event (``.event``) that were
    running; the original exception is ``__cause__``."""

    def __init__(self, plugin: str, event: str, error: BaseException) -> None:
        super().__init__(f"plugin {plugin!r} failed in event {event!r}: {type(error).__name__}: {error}")
        self.plugin, self.event = plugin, event


class CompositionError(ValueError):
    """A strategy cannot be composed from the plugins it was given (an unknown event, a wrong signature, an
    object that implements no event); raised when the strategy is built, before any training."""


def plugin_name(plugin: Any, taken: set[str]) -> str:
    """``plugin.name``, else its class name, made unique among ``taken`` (``replay#2``); adds it to ``taken``."""
    base = getattr(plugin, "name", None) or type(plugin).__name__
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    taken.add(name)
    return name


def compose(plugins: Iterable[Any], *, distributed: bool = False) -> pluggy.PluginManager:
    """A plugin manager holding :class:`~clkernel.hookspecs.TrainingEvents` and ``plugins``, called in the
    order given (pluggy calls the last registered first, so they are registered in reverse). Plugins are named
    in the order given: two ``replay`` plugins are ``replay`` and ``replay#2``.

    :raises CompositionError: one line naming the plugin, for a class given instead of an instance, the same
        object listed twice, an unknown event name (with a did-you-mean), arguments that are not the spec's or
        that have a default value, a hook wrapper on an event the loop calls directly, an object implementing
        no event, or (``distributed``: the run has several processes) a plugin whose class attribute
        ``supports_distributed`` is False.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(TrainingEvents)
    taken: set[str] = set()
    named = [(plugin_name(plugin, taken), plugin) for plugin in plugins]
    seen: dict[int, str] = {}
    for name, plugin in named:
        if isinstance(plugin, type):
            raise CompositionError(f"plugin {name!r} is a class: pass an instance, {plugin.__name__}(...)")
        if id(plugin) in seen:
            raise CompositionError(f"plugin {seen[id(plugin)]!r} is listed twice; pass it once (or two instances)")
        seen[id(plugin)] = name
        if distributed and getattr(plugin, "supports_distributed", True) is False:
            raise CompositionError(f"plugin {name!r} cannot run on several processes (its supports_distributed is "
                                   f"False): run it in one process, without torchrun")
    for name, plugin in reversed(named):
        try:
            pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as e:
            raise CompositionError(_wrong_arguments(pm, name, plugin)
                                   or f"plugin {name!r} cannot be used: {' '.join(str(e).split())}") from e
        callers = pm.get_hookcallers(plugin) or []
        unknown = [hc.name for hc in callers if hc.name not in SPEC]
        if unknown:
            hint = difflib.get_close_matches(unknown[0], EVENTS, n=1)
            raise CompositionError(
                f"plugin {name!r} implements {unknown[0]!r}, which is not a clkernel event"
                + (f" (did you mean {hint[0]!r}?)" if hint else "; `clkernel hooks` lists the events"))
        if not callers:
            raise CompositionError(f"plugin {name!r} implements no clkernel event: mark its methods with "
                                   f"@clkernel.hookimpl")
        for caller in callers:
            impl = next(i for i in caller.get_hookimpls() if i.plugin is plugin)
            spec_args = set(caller.spec.argnames) if caller.spec else set()
            defaulted = [p.name for p in inspect.signature(impl.function).parameters.values()
                         if p.name in spec_args and p.default is not p.empty]
            if defaulted:
                raise CompositionError(f"plugin {name!r}: argument {defaulted[0]!r} of {caller.name!r} has a default "
                                       f"value, so pluggy would never pass it; remove the default")
            direct = SPEC[caller.name].result is not None or caller.name == "log_metrics"
            if direct and (impl.hookwrapper or impl.wrapper):
                raise CompositionError(f"plugin {name!r} implements {caller.name!r} as a hook wrapper; the loop "
                                       f"calls that event directly, so it must be a plain implementation")
    pm.check_pending()
    return pm


def _wrong_arguments(pm: pluggy.PluginManager, name: str, plugin: Any) -> str | None:
    """The message for an event implementation of ``plugin`` taking arguments its event does not pass, or None."""
    for attr in (a for a in dir(plugin) if a in SPEC and pm.parse_hookimpl_opts(plugin, a) is not None):
        passed = getattr(pm.hook, attr).spec.argnames
        taken = [p for p in inspect.signature(getattr(plugin, attr)).parameters if p not in passed]
        if taken:
            return (f"plugin {name!r}: {attr}() takes {', '.join(map(repr, taken))}, which the event does not pass; "
                    f"its arguments are ({', '.join(passed)})")
    return None


def _ordered(pm: pluggy.PluginManager, event: str) -> list[Any]:
    return list(reversed(getattr(pm.hook, event).get_hookimpls()))


class Dispatcher:
    """Prebuilt calls for every event of one plugin manager; rebuilt by :meth:`prepare` (the loop calls it at
    each ``train()`` / top-level ``eval()``, so plugins registered since are seen).

    :param rank: events marked ``rank_zero`` in :data:`~clkernel.hookspecs.SPEC` call no plugin elsewhere.
    :param trace: dispatch every event through pluggy's hook call (slower; monitoring and tracing see it).
    """

    def __init__(self, plugin_manager: pluggy.PluginManager, *, rank: int = 0, trace: bool = False) -> None:
        self.plugin_manager, self.rank, self.trace = plugin_manager, rank, trace
        self.calls: dict[str, Dispatch | None] = {}
        self.prepare()

    def prepare(self) -> None:
        """(Re)build the call of every event from the plugin manager's current implementations."""
        self.calls = {event: self._build(event) for event in EVENTS if SPEC[event].result is None}

    def _build(self, event: str) -> Dispatch | None:
        if SPEC[event].rank_zero and self.rank != 0:
            return None
        impls = _ordered(self.plugin_manager, event)
        if not impls:
            return None
        if self.trace or any(i.hookwrapper or i.wrapper for i in impls):
            caller = getattr(self.plugin_manager.hook, event)
            return lambda state: caller(state=state)
        fns = tuple(_positional(i) for i in impls)
        names = tuple(i.plugin_name for i in impls)

        def call(state: TrainState) -> None:
            for fn in fns:
                try:
                    fn(state)
                except PluginError:  # raised further down (a logger called through state.log_metrics)
                    raise
                except Exception as e:  # zero-cost until raised: the failing plugin is looked up then
                    raise PluginError(names[fns.index(fn)], event, e) from e

        return call

    def collect(self, event: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a collected-result event (``SPEC[event].result`` is set): ``(plugin name, result)`` for every
        non-None result, in plugin order; nothing on other ranks for a ``rank_zero`` event."""
        if SPEC[event].rank_zero and self.rank != 0:
            return []
        results = []
        for impl in _ordered(self.plugin_manager, event):
            try:
                result = impl.function(*(kwargs[a] for a in impl.argnames))
            except PluginError:
                raise
            except Exception as e:
                raise PluginError(impl.plugin_name, event, e) from e
            if result is not None:
                results.append((impl.plugin_name, result))
        return results

    def functions(self, event: str) -> tuple[tuple[str, Callable[..., Any]], ...]:
        """``(plugin name, function)`` per implementation of ``event``, in plugin order, each taking the spec's
        arguments positionally; for the loop's own tight loops (``loss_terms``, ``log_metrics``). Empty on
        other ranks for a ``rank_zero`` event."""
        if SPEC[event].rank_zero and self.rank != 0:
            return ()
        args = tuple(getattr(self.plugin_manager.hook, event).spec.argnames)
        return tuple((i.plugin_name, _positional(i, args)) for i in _ordered(self.plugin_manager, event))


def _positional(impl: Any, spec_args: tuple[str, ...] = ("state",)) -> Callable[..., Any]:
    """The implementation as a function of the spec's arguments, in the spec's order: pluggy lets an
    implementation take fewer of them, in any order."""
    fn, names = impl.function, tuple(impl.argnames)
    if names == spec_args:
        return fn
    if not names:
        return lambda *args: fn()
    return lambda *args: fn(**{k: v for k, v in zip(spec_args, args) if k in names})
