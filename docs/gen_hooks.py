"""Write docs/hooks.md from clkernel/hookspecs.py, the source of truth (tests/test_repository.py checks it is current).

    .venv/bin/python docs/gen_hooks.py
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import clkernel.hookspecs as hookspecs
from clkernel.hookspecs import EVENTS, FREQUENCY, RegistrationHooks, TrainingEvents

TARGET = Path(__file__).with_name("hooks.md")


def _section(name: str, spec: object) -> str:
    doc = (inspect.getdoc(spec) or "").replace(".. versionadded:: 0.1", "*Added in 0.1.*")
    args = ", ".join(a for a in inspect.signature(spec).parameters if a != "self")
    return f"### `{name}({args})`\n\n*Fires: {FREQUENCY.get(name, 'once, when the registry is built')}.*\n\n{doc}\n"


def render() -> str:
    module_doc = inspect.getdoc(hookspecs) or ""
    lines = module_doc.split("::\n\n", 1)[1].splitlines()
    end = next(i for i, line in enumerate(lines) if line and not line.startswith(" "))
    loop, rest = textwrap.dedent("\n".join(lines[:end])).strip(), "\n".join(lines[end:])
    parts = [
        "# Hook reference\n",
        "Generated from `clkernel/hookspecs.py` by `docs/gen_hooks.py`; `clkernel hooks` prints the same list. "
        "Implement only the events you need, each method marked with `@clkernel.hookimpl`, with exactly the "
        "spec's argument names and no default values.\n",
        "## The loop\n",
        f"```text\n{loop}\n```\n",
        rest + "\n",
        "## Training events, in firing order\n",
        *(_section(name, getattr(TrainingEvents, name)) for name in EVENTS),
        "## Registration hooks\n",
        (inspect.getdoc(RegistrationHooks) or "") + "\n",
        *(_section(name, getattr(RegistrationHooks, name)) for name in
          ("register_benchmarks", "register_models", "register_plugins", "register_metrics", "register_loggers")),
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
