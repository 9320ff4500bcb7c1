"""Entry-point discovery and the process-wide registry of named components.

Each entry point of the group ``clkernel.plugins`` names a module implementing the registration hooks of
:class:`clkernel.hookspecs.RegistrationHooks`. Every entry point is loaded and registered on its own: one that
raises is recorded (with its distribution, version and error) and skipped, never taking the others down.
``CLKERNEL_DISABLE_PLUGINS`` (comma-separated entry-point or distribution names) skips entry points unloaded.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import re
import types
import typing
from typing import Any, Callable

import importlib_metadata
import pluggy
from clkernel.log import get_logger
from attrs import define, field, frozen

from clkernel.hookspecs import PROJECT, RegistrationHooks

__all__ = ["ENTRY_POINT_GROUP", "FIRST_PARTY", "KINDS", "Component", "PluginSource", "Registry", "RegistryError",
           "available", "load", "parse_options", "registry", "reset_registry"]

#: The entry-point group of plugin distributions: each entry point names a module of registration hooks.
ENTRY_POINT_GROUP = "clkernel.plugins"
#: Component kind -> the registration hook that fills it.
KINDS = {"benchmark": "register_benchmarks", "model": "register_models", "plugin": "register_plugins",
         "metric": "register_metrics", "logger": "register_loggers"}
DISABLE_VARIABLE = "CLKERNEL_DISABLE_PLUGINS"
#: The first-party distributions and the names they register, by kind: an unknown name that one of them provides
#: is answered with its distribution, installed or not. tests/test_install_hints.py keeps it in step.
FIRST_PARTY = {
    "benchmark": {"clkernel-benchmarks": "split-digits split-mnist permuted-mnist rotated-mnist split-fmnist "
                                         "split-cifar10 split-cifar100 split-tinyimagenet core50 image-folder"},
    "model": {"clkernel-models": "simple-mlp simple-cnn slim-resnet18 mt-simple-mlp mt-simple-cnn",
              "clkernel-pnn": "pnn"},
    "plugin": {"clkernel-replay": "replay gdumb cumulative joint", "clkernel-ewc": "ewc", "clkernel-lwf": "lwf",
               "clkernel-training": "lr-scheduler early-stopping grad-clip amp grad-accumulation ema "
                                    "channels-last compile"},
    "metric": {"clkernel-metrics": "default accuracy loss top-k class-accuracy confusion-matrix accuracy-matrix "
                                   "forgetting bwt fwt cl timing cpu ram gpu disk"},
    "logger": {"clkernel-loggers": "interactive report text csv jsonl tensorboard", "clkernel-wandb": "wandb",
               "clkernel-mlflow": "mlflow"},
}
_PROVIDERS = {(kind, name): dist for kind, dists in FIRST_PARTY.items() for dist, names in dists.items()
              for name in names.split()}

log = get_logger("clkernel")


class RegistryError(LookupError):
    """An unknown kind or name, a name registered twice, or options a factory does not take."""


@define
class PluginSource:
    """One entry point of ``clkernel.plugins``: where it comes from, whether it loaded, what it registered."""

    entry_point: str
    distribution: str = ""
    version: str = ""
    #: "ok"; "error"; "disabled"; "clash": loaded, but some of its names are also registered by another source,
    #: which makes them unusable (its other names work) until one source is disabled (see ``clashes``).
    status: str = "ok"
    error: str | None = None
    components: dict[str, list[str]] = field(factory=dict)
    clashes: list[str] = field(factory=list)

    def label(self) -> str:
        return f"{self.distribution or self.entry_point} {self.version}".strip()


@frozen
class Component:
    """A named factory registered by a plugin source."""

    kind: str
    name: str
    factory: Callable[..., Any]
    summary: str
    default: bool
    source: PluginSource

    def options(self) -> dict[str, inspect.Parameter]:
        """The factory's keyword options, from its signature."""
        params = _signature(self.factory).parameters.values()
        return {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


class Registry:
    """Named components by kind, filled from entry points or from modules added directly (tests)."""

    def __init__(self) -> None:
        self.sources: list[PluginSource] = []
        self._components: dict[tuple[str, str], Component] = {}
        self._clashes: dict[tuple[str, str], list[PluginSource]] = {}

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> Registry:
        reg = cls()
        disabled = {_normal(n): n.strip() for n in os.environ.get(DISABLE_VARIABLE, "").split(",") if n.strip()}
        seen, known = set(), set()
        for ep in importlib_metadata.entry_points(group=group):
            dist = ep.dist
            key = (ep.name, ep.value, dist.name if dist else "")
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            source = PluginSource(ep.name, dist.name if dist else "", dist.version if dist else "")
            known |= {ep.name, source.distribution} - {""}
            if {_normal(ep.name), _normal(source.distribution)} & disabled.keys():
                source.status = "disabled"
                reg.sources.append(source)
                continue
            try:
                module = ep.load()
            except BaseException as e:  # noqa: BLE001 - a broken plugin must never stop the others
                reg._fail(source, f"import of {ep.value!r} failed: {type(e).__name__}: {e}")
                continue
            reg.add_module(module, source)
        for value in sorted(disabled.keys() - {_normal(n) for n in known}):
            log.warning("unknown_disabled_plugin", variable=DISABLE_VARIABLE, value=disabled[value],
                        known=sorted(known, key=str.lower))
        return reg

    def _fail(self, source: PluginSource, message: str) -> None:
        source.status, source.error, source.components = "error", message, {}
        self.sources.append(source)
        log.warning("plugin_failed", entry_point=source.entry_point, distribution=source.distribution,
                    version=source.version, error=message)

    def add_module(self, module: Any, source: PluginSource | str) -> PluginSource:
        """Run ``module``'s registration hooks; its components are added only if all of them succeed."""
        if isinstance(source, str):
            source = PluginSource(source)
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(RegistrationHooks)
        staged: list[Component] = []
        try:
            pm.register(module, name=source.entry_point)
            unknown = next((c.name for c in pm.get_hookcallers(module) or [] if c.name not in KINDS.values()), None)
            if unknown is not None:  # a misspelt registration hook, named with the one meant
                close = "".join(f"did you mean {c!r}? " for c in difflib.get_close_matches(unknown, KINDS.values(), 1))
                raise RegistryError(f"{unknown!r} is not a registration hook ({close}the hooks: "
                                    f"{', '.join(KINDS.values())})")
            pm.check_pending()
            for kind, hook in KINDS.items():
                for impl in getattr(pm.hook, hook).get_hookimpls():
                    impl.function(_register_into(staged, kind, source))
        except BaseException as e:  # noqa: BLE001
            self._fail(source, f"registration failed: {type(e).__name__}: {e}")
            return source
        self.sources.append(source)
        for comp in staged:
            key = (comp.kind, comp.name)
            source.components.setdefault(comp.kind, []).append(comp.name)
            if key in self._components or key in self._clashes:
                holders = self._clashes.setdefault(key, [self._components.pop(key).source] if key in
                                                   self._components else [])
                holders.append(source)
                what = f"{comp.kind} {comp.name!r} is also registered by "
                for holder in holders:
                    others = ", ".join(h.label() for h in holders if h is not holder)
                    holder.status = "clash"
                    holder.clashes = [c for c in holder.clashes if not c.startswith(what)] + [
                        f"{what}{others}; set {DISABLE_VARIABLE}={_disable_value(holder, holders)} to disable "
                        f"this one"]
            else:
                self._components[key] = comp
        return source

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise RegistryError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")

    def available(self, kind: str) -> list[str]:
        """The usable names of ``kind``, sorted."""
        self._check_kind(kind)
        return sorted(name for k, name in self._components if k == kind)

    def defaults(self, kind: str) -> list[str]:
        """The names of ``kind`` that their plugins mark as defaults for ``clkernel run``."""
        return [c.name for (k, _), c in sorted(self._components.items()) if k == kind and c.default]

    def get(self, kind: str, name: str) -> Component:
        self._check_kind(kind)
        if not isinstance(name, str):
            raise RegistryError(f"{kind} name must be a string, got {name!r}")
        if (kind, name) in self._clashes:
            holders = self._clashes[kind, name]
            values = " or ".join(f"{DISABLE_VARIABLE}={_disable_value(h, holders)}" for h in holders)
            raise RegistryError(f"{kind} {name!r} is registered by {' and '.join(h.label() for h in holders)}: "
                                f"uninstall one, or set {values} to disable one")
        if (kind, name) not in self._components:
            listing = f"installed {kind}s: {', '.join(self.available(kind)) or '(none)'}"
            if not name.strip():
                raise RegistryError(f"empty {kind} name; {listing}")
            parts = [f"unknown {kind} {name!r}", listing, *self._hint(kind, name)]
            broken = [s.label() for s in self.sources if s.status == "error"]
            if broken:
                parts.append(f"broken plugins (see `clkernel plugins`): {', '.join(broken)}")
            raise RegistryError("; ".join(parts))
        return self._components[kind, name]

    def _hint(self, kind: str, name: str) -> list[str]:
        """Who provides an unknown ``name`` if a first-party distribution does, else the closest installed or
        first-party name (case-insensitive)."""
        if (kind, name) in _PROVIDERS:
            return [self._provided_by(kind, name)]
        names = {n.lower(): n for n in [*(n for k, n in _PROVIDERS if k == kind), *self.available(kind)]}
        close = [names[n] for n in difflib.get_close_matches(name.lower(), names, n=1)]
        if not close or (kind, close[0]) in self._components or (kind, close[0]) in self._clashes:
            return [f"did you mean {n!r}?" for n in close]
        return [f"did you mean {close[0]!r}?", self._provided_by(kind, close[0])]

    def _provided_by(self, kind: str, name: str) -> str:
        dist = _PROVIDERS[kind, name]
        source = next((s for s in self.sources if _normal(s.distribution) == _normal(dist)), None)
        what = f"{name!r} is provided by {dist}"
        if source is None:
            return f"{what}: pip install {dist}"
        if source.status == "disabled":
            return f"{what}, which {DISABLE_VARIABLE} disables"
        if source.status == "error":
            return f"{what}, which failed to load (see `clkernel plugins`)"
        return f"{what}, but the installed {source.label()} does not register it: pip install -U {dist}"

    def load(self, kind: str, name: str, /, **options: Any) -> Any:
        """Build component ``name`` of ``kind`` with ``options`` (which may hold a ``name`` or ``kind`` option of the
        component's own: ``kind`` and ``name`` are positional-only)."""
        comp = self.get(kind, name)
        try:
            _signature(comp.factory).bind(**options)
        except TypeError as e:
            raise RegistryError(f"{kind} {name!r} does not take these options ({e}); its options: "
                                f"{', '.join(comp.options()) or '(none)'}") from None
        return comp.factory(**options)


def _register_into(staged: list[Component], kind: str, source: PluginSource) -> Callable[..., None]:
    def register(name: str, factory: Callable[..., Any], *, summary: str = "", default: bool = False) -> None:
        if not isinstance(name, str) or not name or ":" in name or "," in name:
            raise ValueError(f"{kind} name must be a non-empty string without ':' or ',', got {name!r}")
        if not callable(factory):
            raise TypeError(f"{kind} {name!r}: factory must be callable, got {factory!r}")
        if any(c.kind == kind and c.name == name for c in staged):
            raise ValueError(f"{kind} {name!r} registered twice by the same plugin")
        doc = inspect.getdoc(factory) or ""
        staged.append(Component(kind, name, factory, summary or doc.split("\n\n")[0], default, source))

    return register


def _normal(name: str) -> str:
    """A distribution or entry-point name for comparison: case-insensitive, runs of '-', '_', '.' alike."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _disable_value(source: PluginSource, holders: list[PluginSource]) -> str:
    """What to add to CLKERNEL_DISABLE_PLUGINS to disable ``source`` alone among ``holders``: its distribution,
    or its entry point if another holder shares the distribution."""
    shared = any(_normal(h.distribution) == _normal(source.distribution) for h in holders if h is not source)
    return source.entry_point if shared or not source.distribution else source.distribution


def _signature(factory: Callable[..., Any]) -> inspect.Signature:
    """The factory's signature with each annotation evaluated on its own: one that does not evaluate (a name
    imported only for type checking) stays a string without turning the others into strings."""
    try:
        return inspect.signature(factory, eval_str=True)
    except Exception:  # noqa: BLE001 - some annotation does not evaluate: evaluate them one by one
        raw = inspect.signature(factory)
    scope = getattr(inspect.unwrap(factory), "__globals__", {})

    def evaluate(annotation: Any) -> Any:
        if not isinstance(annotation, str):
            return annotation
        try:
            return eval(annotation, scope)  # noqa: S307 - what inspect.signature(eval_str=True) does
        except Exception:  # noqa: BLE001
            return annotation

    return raw.replace(parameters=[p.replace(annotation=evaluate(p.annotation)) for p in raw.parameters.values()],
                       return_annotation=inspect.Signature.empty)


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p for p in [*parts, current] if p.strip()]


def _convert(text: str, param: inspect.Parameter | None, where: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if param is None:
        return value
    target = param.annotation
    if target is param.empty and param.default not in (param.empty, None):
        target = type(param.default)
    if typing.get_origin(target) in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(target) if t is not type(None)]
        if value is None or any(isinstance(value, t) for t in options if isinstance(t, type)):
            return value
        target = options[0] if options else target
    if target is bool and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return value.lower() in ("true", "yes")
    if target in (int, float) and not isinstance(value, bool) and isinstance(value, (int, float)):
        if target is int and isinstance(value, float):  # 2.0 is a float: never silently truncated
            raise RegistryError(f"{where}: option {param.name}={text!r} must be an integer")
        return target(value)
    if target is str:
        return text
    if isinstance(target, type) and target in (int, float, bool) and not isinstance(value, target):
        raise RegistryError(f"{where}: option {param.name}={text!r} must be of type {target.__name__}")
    return value


def parse_options(kind: str, spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,key=value"`` -> (name, options typed after the factory's signature)."""
    name, _, rest = spec.partition(":")
    comp = registry().get(kind, name.strip())
    params, where = comp.options(), f"{kind} {comp.name!r}"
    any_key = any(p.kind == p.VAR_KEYWORD for p in _signature(comp.factory).parameters.values())
    options: dict[str, Any] = {}
    for item in _split_top_level(rest):
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq:
            raise RegistryError(f"{where}: option {item.strip()!r} is not of the form key=value")
        if key in options:
            raise RegistryError(f"{where}: option {key!r} is given twice")
        if key not in params and not any_key:
            close = difflib.get_close_matches(key, params, n=1)
            raise RegistryError(f"{where} has no option {key!r}; its options: {', '.join(params) or '(none)'}"
                                + (f"; did you mean {close[0]!r}?" if close else ""))
        options[key] = _convert(text.strip(), params.get(key), where)
    return comp.name, options


_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, built from entry points on first use."""
    global _registry
    if _registry is None:
        _registry = Registry.from_entry_points()
    return _registry


def reset_registry(new: Registry | None = None) -> None:
    """Forget the process-wide registry (it is rebuilt on next use), or replace it with ``new``."""
    global _registry
    _registry = new


def load(kind: str, name: str, /, **options: Any) -> Any:
    """Build the component ``name`` of ``kind`` (benchmark, model, plugin, metric, logger) with ``options``
    (``kind`` and ``name`` are positional-only, so a component may have options of those names)."""
    return registry().load(kind, name, **options)


def available(kind: str) -> list[str]:
    """The installed component names of ``kind``."""
    return registry().available(kind)
