"""The run configuration of ``clkernel run``: its keys, defaults and limits, and the checks of every value.

:func:`resolve_run_config` merges the defaults, the ``--config`` TOML file and the flags (in that order of
precedence, flags last) and refuses any bad value with a :class:`UsageError` whose message is one line naming the
option (``--epochs``, or the key and file for a config-file value) and the value. Nothing here creates or
changes a file or folder: the checks of ``--output`` (:func:`check_output`) and ``--data-root``
(:func:`check_data_root`) only look. Component specs (``NAME:key=value,...`` or a config table) are checked
against the installed factory's signature by :func:`check_component` (names, option keys and types).

Cheap to import: torch is imported only by :func:`check_device`, and only for a ``cuda`` or ``mps`` device.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import inspect
import math
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_ALIASES", "INT_LIMITS", "LIST_KEYS", "RESUME_MAY_CHANGE", "RUN_KEYS", "SEED_MAX", "UsageError",
           "check_component", "check_data_root", "check_device", "check_output", "flag", "load_config_file",
           "resolve_run_config"]

#: Every key of a run (config-file keys, and flags with ``_`` written ``-``) and its default.
RUN_KEYS: dict[str, Any] = {
    "benchmark": None, "model": None, "plugin": [], "metric": [], "logger": [], "optimizer": "sgd",
    "lr": 0.01, "momentum": 0.9, "epochs": 1, "mb_size": 32, "eval_mb_size": 256, "seed": 0,
    "device": None, "output": None, "data_root": None, "on_nonfinite": "raise", "eval_every": 0,
    "eval_streams": ["test"], "checkpoint_every": 0, "checkpoint_minutes": 0.0, "keep_checkpoints": 3,
    "num_workers": 0, "pin_memory": False, "persistent_workers": False}

#: Keys whose value may differ from the saved configuration when a run resumes (``clkernel run --resume``): they
#: change where or how often the run works, not what it computes.
RESUME_MAY_CHANGE = ("device", "data_root", "output", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints",
                     "num_workers", "pin_memory", "persistent_workers")

#: Config-file spellings accepted for a key (besides ``-`` for ``_``).
CONFIG_ALIASES: dict[str, str] = {"plugins": "plugin", "metrics": "metric", "loggers": "logger"}

#: The keys that hold a list of component specs (repeatable flags).
LIST_KEYS = ("plugin", "metric", "logger")

#: Integer keys and their inclusive bounds. The upper bounds only catch typos: a run of a million epochs, or a
#: minibatch of more than 2**20 samples, is not something anyone means.
INT_LIMITS: dict[str, tuple[int, int]] = {"epochs": (1, 10**6), "mb_size": (1, 2**20), "eval_mb_size": (1, 2**20),
                                          "seed": (0, 2**63 - 1), "eval_every": (-1, 10**6),
                                          "checkpoint_every": (0, 10**9), "keep_checkpoints": (1, 10**6),
                                          "num_workers": (0, 1024)}
#: The largest seed (torch takes seeds up to 2**64 - 1, but numpy and most tools take 63 bits).
SEED_MAX = INT_LIMITS["seed"][1]

_CHOICES = {"optimizer": ("sgd", "adam"), "on_nonfinite": ("raise", "warn")}
_COMPONENT_KEYS = ("benchmark", "model", *LIST_KEYS)
_DEVICE_FORMS = "cpu, cuda or cuda:N (N a CUDA device index)"


class UsageError(Exception):
    """Bad command-line or config-file input: ``clkernel`` exits with code 2 and prints the message, one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # one line, whatever the parts held


def flag(key: str) -> str:
    """The command-line flag of run key ``key``: ``mb_size`` -> ``--mb-size``."""
    return "--" + key.replace("_", "-")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


# ---------------------------------------------------------------------- config file

def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML table of a ``--config`` file; a missing, unreadable, binary or invalid file is a UsageError."""
    name = str(path)
    if not name.strip():
        raise UsageError("--config is empty: give the path of a TOML file")
    where = f"--config {name}"
    try:
        raw = Path(path).read_bytes()
    except OSError as e:  # missing, a folder, no permission
        raise UsageError(f"{where}: cannot read it: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not a TOML text file (it is not UTF-8 text)") from None
    if "\x00" in text:
        raise UsageError(f"{where} is not a TOML text file (it holds NUL bytes)")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{where} is not valid TOML: {e}") from None


def _config_items(data: dict[str, Any], source: str) -> dict[str, tuple[Any, str]]:
    """Config-file key -> (value, the name to show for it), keys normalised; unknown or doubled keys refused."""
    items: dict[str, tuple[Any, str]] = {}
    valid = [*RUN_KEYS, *CONFIG_ALIASES]
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        key = CONFIG_ALIASES.get(key, key)
        shown = f"{raw_key} (in {source})"
        if key not in RUN_KEYS:
            close = difflib.get_close_matches(raw_key.replace("-", "_"), valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"{source}: unknown key {_short(raw_key)}; {hint}keys: {', '.join(RUN_KEYS)}")
        if key in items:
            raise UsageError(f"{source}: key {raw_key!r} is given twice (as {items[key][1].split(' ')[0]!r} and "
                             f"{raw_key!r})")
        items[key] = (value, shown)
    return items


# ---------------------------------------------------------------------- values

def _int(key: str, value: Any, shown: str) -> int:
    low, high = INT_LIMITS[key]
    if isinstance(value, str) and shown.startswith("--") and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)  # a flag's text (a config file must give a number)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{shown} must be an integer from {low} to {high}, got {_short(value)}")
    return value


def _float(value: Any, shown: str, what: str) -> float:
    if isinstance(value, str) and shown.startswith("--"):  # a flag's text (a config file must give a number)
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= 1e308:  # nan, inf
        raise UsageError(f"{shown} must be {what}, got {_short(value)}")
    return float(value)


def _text(value: Any, shown: str, what: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{shown} must be {what} (a string), got {_short(value)}")
    if not value.strip():
        raise UsageError(f"{shown} is empty: give {what}")
    if "\x00" in value:
        raise UsageError(f"{shown} holds a NUL character: {_short(value)}")
    return value


def _stream_names(value: Any, shown: str) -> list[str]:
    """Stream names: a comma-separated text (``valid,test``) or a list of strings; none empty, none twice."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise UsageError(f"{shown} must be stream names (valid,test or a list), got {_short(value)}")
    names = [_text(n, shown, "a stream name").strip() for n in names]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise UsageError(f"{shown} names stream {doubled[0]!r} twice")
    return names


def _choice(key: str, value: Any, shown: str) -> str:
    choices = _CHOICES[key]
    if not isinstance(value, str) or value not in choices:
        close = difflib.get_close_matches(value.lower(), choices, n=1) if isinstance(value, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"{shown} must be {' or '.join(choices)}, got {_short(value)}{hint}")
    return value


def _component(kind: str, value: Any, shown: str) -> Any:
    """A component spec: a non-empty ``NAME[:options]`` string or a table with a ``name``."""
    if isinstance(value, dict):
        name = value.get("name")
        if not isinstance(name, str) or not name.strip():
            raise UsageError(f"{shown}: a {kind} table needs a 'name' key holding a non-empty {kind} name, "
                             f"got {_short(value)}")
        return value
    if not isinstance(value, str):
        raise UsageError(f"{shown} must be a {kind} name (NAME or NAME:key=value,...) or a table with a name, "
                         f"got {_short(value)}")
    if not value.split(":")[0].strip():
        raise UsageError(f"{shown} has an empty {kind} name: {value!r}; see `clkernel plugins` for the names")
    return value


# ---------------------------------------------------------------------- paths and device

def check_device(text: Any, option: str = "--device") -> str:
    """The device ``text`` names, normalised (``CPU`` -> ``cpu``), if this machine has it; else a UsageError.

    Accepted: ``cpu``; ``cuda`` and ``cuda:N`` when CUDA is available with more than N devices; ``mps`` when
    available. torch is imported only for a ``cuda`` or ``mps`` device.
    """
    if not isinstance(text, str):
        raise UsageError(f"{option} must be {_DEVICE_FORMS} (a string), got {_short(text)}")
    value = text.strip().lower()
    if value == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if match:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"{option} {text}: this machine has no CUDA device; use --device cpu")
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise UsageError(f"{option} {text}: only {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
        return value
    if value == "mps":
        import torch

        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"{option} {text}: MPS is not available on this machine; use {_DEVICE_FORMS}")
        return value
    raise UsageError(f"{option} {_short(text)} is not a device this command runs on; use {_DEVICE_FORMS}")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def check_output(path: Any, option: str = "--output") -> Path:
    """``path`` as a run folder that can be created (or an existing folder that can be written); else a
    UsageError naming the reason: an existing file, a file among its parents, a name too long, no permission.

    Creates nothing. Whether an existing non-empty folder may be reused is the caller's decision.
    """
    text = _text(path if not isinstance(path, os.PathLike) else os.fspath(path), option, "a folder path")
    where = f"{option} {_short(text)}"
    target = Path(text)
    absolute = Path(os.path.abspath(target))
    for part in absolute.parts[1:]:
        limit = _pathconf(_nearest_existing(absolute), "PC_NAME_MAX", 255)
        if len(os.fsencode(part)) > limit:
            raise UsageError(f"{where}: the name {_short(part, 40)} is {len(os.fsencode(part))} bytes long; "
                             f"the file system allows {limit}")
    existing = _nearest_existing(absolute)
    if not target.is_absolute():  # name the culprit as the user wrote the path
        existing = Path(os.path.relpath(existing))
        absolute = Path(os.path.relpath(absolute))
    if existing == absolute:
        if not absolute.is_dir():
            kind = "a file" if absolute.is_file() else "not a folder"
            raise UsageError(f"{where} exists and is {kind}; give a folder path")
        if not os.access(absolute, os.W_OK | os.X_OK) or _read_only(absolute):
            raise UsageError(f"{where}: the folder is not writable")
        return target
    if not existing.is_dir():
        raise UsageError(f"{where}: {existing} is a file, not a folder, so nothing can be created under it")
    if not os.access(existing, os.W_OK | os.X_OK) or _read_only(existing):
        raise UsageError(f"{where}: cannot create it: {existing} is not writable")
    return target


def _read_only(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only (which ``os.access`` misses for root)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError, AttributeError):
        return default


def check_data_root(path: Any, option: str = "--data-root") -> Path:
    """``path`` if it is an existing, readable folder; else a UsageError (nothing is created)."""
    text = _text(path if not isinstance(path, os.PathLike) else os.fspath(path), option, "a folder path")
    where = f"{option} {_short(text)}"
    target = Path(text)
    if not os.path.exists(target):  # also for a path the system cannot look up (too long...)
        raise UsageError(f"{where} does not exist")
    if not os.path.isdir(target):
        raise UsageError(f"{where} is not a folder")
    if not os.access(target, os.R_OK | os.X_OK):
        raise UsageError(f"{where}: the folder is not readable")
    return target


# ---------------------------------------------------------------------- components

def _target_type(param: inspect.Parameter) -> tuple[Any, bool]:
    """(the plain type an option takes: int, float, bool, str, list, or None for anything; whether None is ok)."""
    target = param.annotation
    if target is param.empty:
        if param.default in (param.empty, None):
            return None, True
        return type(param.default), False
    nullable = False
    if typing.get_origin(target) in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(target) if t is not type(None)]
        nullable = len(options) < len(typing.get_args(target))
        if len(options) != 1:
            return None, nullable
        target = options[0]
    origin = typing.get_origin(target) or target
    if origin in (int, float, bool, str, list, tuple, dict):
        return origin, nullable
    return None, nullable


def _check_option_value(where: str, key: str, value: Any, param: inspect.Parameter) -> None:
    target, nullable = _target_type(param)
    if value is None and nullable:
        return
    if target is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"{where}: option {key}={_short(value)} must be an integer")
    if target is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UsageError(f"{where}: option {key}={_short(value)} must be a number")
    if target is float and not math.isfinite(float(value)):
        raise UsageError(f"{where}: option {key}={_short(value)} must be a finite number")
    if target is bool and not isinstance(value, bool):
        raise UsageError(f"{where}: option {key}={_short(value)} must be true or false")
    if target is str and not isinstance(value, str):
        raise UsageError(f"{where}: option {key}={_short(value)} must be a string")
    if target in (list, tuple) and not isinstance(value, (list, tuple)):
        raise UsageError(f"{where}: option {key}={_short(value)} must be a list")


def check_component(kind: str, spec: Any, shown: str | None = None) -> tuple[str, dict[str, Any]]:
    """(name, options) of a component spec, checked against the installed factory's signature.

    ``spec`` is ``"NAME:key=value,..."`` (parsed by :func:`clkernel.discovery.parse_options`) or a config table
    ``{name = ..., key = value}``. An unknown name, an unknown or doubled option key, or a value of the wrong type
    (``2.0`` or ``"x"`` for an int, ``nan`` for a number, ``1`` for a bool) is a UsageError naming the option.
    Values are not range-checked here: the factories do that.
    """
    from clkernel.discovery import RegistryError, parse_options, registry

    shown = shown or flag(kind)
    _component(kind, spec, shown)
    try:
        if isinstance(spec, dict):
            options = {k: v for k, v in spec.items() if k != "name"}
            comp = registry().get(kind, spec["name"].strip())
        else:
            comp = registry().get(kind, spec.partition(":")[0].strip())
            options = parse_options(kind, spec)[1]
    except RegistryError as e:
        raise UsageError(f"{shown}: {e}") from None
    params, where = comp.options(), f"{shown} {comp.name}"
    any_key = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(comp.factory).parameters.values())
    for key, value in options.items():
        if key not in params:
            if any_key:
                continue
            close = difflib.get_close_matches(key, params, n=1)
            raise UsageError(f"{where} has no option {key!r}; its options: {', '.join(params) or '(none)'}"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
        _check_option_value(where, key, value, params[key])
    return comp.name, options


# ---------------------------------------------------------------------- the run

def resolve_run_config(args: argparse.Namespace, base: dict[str, Any] | None = None,
                       given: set[str] | None = None, base_source: str | None = None) -> dict[str, Any]:
    """The run's configuration: :data:`RUN_KEYS` defaults < the ``--config`` TOML file < flags, every value
    checked. A bad value is a :class:`UsageError` naming the option (or config key and file) and the value.

    Flag values may be typed already (argparse ``type=int``) or still be text. Checks: integers in
    :data:`INT_LIMITS` (no floats, no bools); ``lr`` finite and > 0; ``momentum`` finite and >= 0, and only with
    the sgd optimizer; choices for ``optimizer`` and ``on_nonfinite``; booleans for ``pin_memory`` and
    ``persistent_workers`` (which needs ``num_workers`` > 0); component specs (names, option keys and
    types, see :func:`check_component`); ``device`` by :func:`check_device` (normalised), ``output`` by
    :func:`check_output` and ``data_root`` by :func:`check_data_root`. Creates nothing.

    :param base: the values to start from instead of :data:`RUN_KEYS` (a resumed run's saved configuration).
    :param given: filled with the keys the config file or the flags set.
    :param base_source: where ``base`` comes from, named in errors about its values (``run/config.json``).
    """
    start = {**RUN_KEYS, **(base or {})}
    config: dict[str, Any] = {k: (list(v) if isinstance(v, list) else v) for k, v in start.items() if k in RUN_KEYS}
    shown: dict[str, str] = {k: f"{k} (in {base_source})" if base_source and k in (base or {}) else flag(k)
                             for k in RUN_KEYS}
    given = set() if given is None else given
    config_path = getattr(args, "config", None)
    if config_path is not None:
        source = f"config file {config_path}"
        for key, (value, name) in _config_items(load_config_file(config_path), source).items():
            if key in LIST_KEYS:
                if not isinstance(value, list):
                    value = [value]
                elif not value:
                    raise UsageError(f"{name} is an empty list; leave the key out for the defaults")
            config[key], shown[key] = value, name
            given.add(key)
    for key in RUN_KEYS:
        value = getattr(args, key, None)
        if value is not None and value != []:
            config[key], shown[key] = (list(value) if key in LIST_KEYS else value), flag(key)
            given.add(key)

    for key in INT_LIMITS:
        config[key] = _int(key, config[key], shown[key])
    config["lr"] = _float(config["lr"], shown["lr"], "a finite number > 0")
    if config["lr"] <= 0:
        raise UsageError(f"{shown['lr']} must be a finite number > 0, got {config['lr']!r}")
    config["eval_streams"] = _stream_names(config["eval_streams"], shown["eval_streams"])
    config["momentum"] = _float(config["momentum"], shown["momentum"], "a finite number >= 0")
    config["checkpoint_minutes"] = _float(config["checkpoint_minutes"], shown["checkpoint_minutes"],
                                          "a finite number >= 0 (0: no timed checkpoints)")
    if config["checkpoint_minutes"] < 0:
        raise UsageError(f"{shown['checkpoint_minutes']} must be a finite number >= 0, got "
                         f"{config['checkpoint_minutes']!r}")
    if config["momentum"] < 0:
        raise UsageError(f"{shown['momentum']} must be a finite number >= 0, got {config['momentum']!r}")
    for key in _CHOICES:
        config[key] = _choice(key, config[key], shown[key])
    for key in ("pin_memory", "persistent_workers"):
        if not isinstance(config[key], bool):
            raise UsageError(f"{shown[key]} must be true or false, got {_short(config[key])}")
    if config["persistent_workers"] and config["num_workers"] == 0:
        raise UsageError(f"{shown['persistent_workers']} keeps DataLoader workers alive between epochs: it needs "
                         f"{shown['num_workers']} > 0")
    if config["optimizer"] != "sgd" and "momentum" in given:
        raise UsageError(f"{shown['momentum']} applies only to --optimizer sgd, not with {shown['optimizer']} "
                         f"{config['optimizer']}")

    for key in ("benchmark", "model"):
        if config[key] is not None:
            config[key] = _component(key, config[key], shown[key])
    for key in LIST_KEYS:
        config[key] = [_component(key, v, shown[key]) for v in config[key]]
    for key in _COMPONENT_KEYS:
        for spec in config[key] if key in LIST_KEYS else [config[key]]:
            if spec is not None:
                check_component(key, spec, shown[key])

    if config["device"] is not None:
        config["device"] = check_device(config["device"], shown["device"])
    if config["output"] is not None:
        config["output"] = str(check_output(config["output"], shown["output"]))
    if config["data_root"] is not None:
        config["data_root"] = str(check_data_root(config["data_root"], shown["data_root"]))
    return config
