"""Option validators for plugin factories: one check, one message that names the plugin, the option and the value.

Each returns the value (converted where it says so) so that it reads as an assignment::

    self.mem_size = positive_int(mem_size, "mem_size", "replay")

and raises :class:`ValueError` (``"replay: mem_size must be a positive integer, got 0"``), which ``clkernel run``
reports as a one-line usage error (exit code 2).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["non_negative_int", "non_negative_number", "positive_int", "positive_number", "unit_interval"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(owner: str, name: str, what: str, value: Any) -> ValueError:
    return ValueError(f"{owner + ': ' if owner else ''}{name} must be {what}, got {value!r}")


def positive_int(value: Any, name: str, owner: str = "") -> int:
    """``value`` if it is an ``int`` >= 1 (not a bool). :raises ValueError: otherwise."""
    if not _is_int(value) or value < 1:
        raise _fail(owner, name, "a positive integer", value)
    return value


def non_negative_int(value: Any, name: str, owner: str = "") -> int:
    """``value`` if it is an ``int`` >= 0 (not a bool). :raises ValueError: otherwise."""
    if not _is_int(value) or value < 0:
        raise _fail(owner, name, "an integer >= 0", value)
    return value


def positive_number(value: Any, name: str, owner: str = "") -> float:
    """``float(value)`` if it is a finite number > 0. :raises ValueError: otherwise (NaN and infinities too)."""
    if not _is_number(value) or value <= 0:
        raise _fail(owner, name, "a positive number", value)
    return float(value)


def non_negative_number(value: Any, name: str, owner: str = "") -> float:
    """``float(value)`` if it is a finite number >= 0. :raises ValueError: otherwise."""
    if not _is_number(value) or value < 0:
        raise _fail(owner, name, "a non-negative number", value)
    return float(value)


def unit_interval(value: Any, name: str, owner: str = "", *, include_one: bool = True) -> float:
    """``float(value)`` if it is a number in ``[0, 1]`` (``[0, 1)`` with ``include_one=False``).

    :raises ValueError: otherwise.
    """
    if not _is_number(value) or value < 0 or value > 1 or (value == 1 and not include_one):
        raise _fail(owner, name, f"a number in [0, 1{']' if include_one else ')'}", value)
    return float(value)
