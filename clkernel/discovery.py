"""Entry-point discovery and the process-wide registry of named components.

Each entry point of the group ``clkernel.plugins`` names a module implementing the registration hooks of
:class:`clkernel.hookspecs.RegistrationHooks`. Every entry point is loaded and registered on its own: one that
raises is recorded (with its distribution, version and error) and skipped, never taking the others down.
"""

from __future__ import annotations

import ast
import inspect
import os
import types
import typing
from typing import Any, Callable

import importlib_metadata
import pluggy
from clkernel.log import get_logger
from attrs import define, field, frozen

from clkernel.hookspecs import PROJECT, RegistrationHooks

__all__ = ["ENTRY_POINT_GROUP", "KINDS", "Component", "PluginSource", "Registry", "RegistryError", "available",
           "load", "parse_options", "registry", "reset_registry"]

ENTRY_POINT_GROUP = "clkernel.plugins"
#: Component kind -> the registration hook that fills it.
KINDS = {"benchmark": "register_benchmarks", "model": "register_models", "plugin": "register_plugins",
         "metric": "register_metrics", "logger": "register_loggers"}
DISABLE_VARIABLE = "CLKERNEL_DISABLE_PLUGINS"

log = get_logger("clkernel")


class RegistryError(LookupError):
    """An unknown kind or name, a name registered twice, or options a factory does not take."""


@define
class PluginSource:
    """One entry point of ``clkernel.plugins``: where it comes from, whether it loaded, what it registered."""

    entry_point: str
    distribution: str = ""
    version: str = ""
    status: str = "ok"  # "ok", "error" or "disabled"
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
        disabled = {n.strip() for n in os.environ.get(DISABLE_VARIABLE, "").split(",") if n.strip()}
        seen = set()
        for ep in importlib_metadata.entry_points(group=group):
            dist = ep.dist
            key = (ep.name, ep.value, dist.name if dist else "")
            if key in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(key)
            source = PluginSource(ep.name, dist.name if dist else "", dist.version if dist else "")
            if ep.name in disabled:
                source.status = "disabled"
                reg.sources.append(source)
                continue
            try:
                module = ep.load()
            except BaseException as e:  # noqa: BLE001 - a broken plugin must never stop the others
                reg._fail(source, f"import of {ep.value!r} failed: {type(e).__name__}: {e}")
                continue
            reg.add_module(module, source)
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
                for holder in holders:
                    others = [h.label() for h in holders if h is not holder]
                    holder.clashes.append(f"{comp.kind} {comp.name!r} is also registered by {', '.join(others)}")
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
        if (kind, name) in self._clashes:
            holders = " and ".join(h.label() for h in self._clashes[kind, name])
            raise RegistryError(f"{kind} {name!r} is registered by two distributions, {holders}: uninstall one "
                                f"or disable its entry point with {DISABLE_VARIABLE}")
        if (kind, name) not in self._components:
            names = self.available(kind)
            broken = [s.label() for s in self.sources if s.status == "error"]
            raise RegistryError(
                f"unknown {kind} {name!r}; installed {kind}s: {', '.join(names) or '(none)'}"
                + (f". Broken plugins (see `clkernel plugins`): {', '.join(broken)}" if broken else "")
                + f". Install the distribution that provides it (for example clkernel-{kind}s).")
        return self._components[kind, name]

    def load(self, kind: str, name: str, **options: Any) -> Any:
        """Build component ``name`` of ``kind`` with ``options``."""
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
        if target is int and value != int(value):
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
    params = comp.options()
    options: dict[str, Any] = {}
    for item in _split_top_level(rest):
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq:
            raise RegistryError(f"{kind} {name!r}: option {item!r} is not of the form key=value")
        if key not in params and not any(p.kind == p.VAR_KEYWORD for p in
                                         _signature(comp.factory).parameters.values()):
            raise RegistryError(f"{kind} {name!r} has no option {key!r}; its options: "
                                f"{', '.join(params) or '(none)'}")
        options[key] = _convert(text.strip(), params.get(key), f"{kind} {name!r}")
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


def load(kind: str, name: str, **options: Any) -> Any:
    """Build the component ``name`` of ``kind`` (benchmark, model, plugin, metric, logger) with ``options``."""
    return registry().load(kind, name, **options)


def available(kind: str) -> list[str]:
    """The installed component names of ``kind``."""
    return registry().available(kind)
