"""Write docs/hooks.md from clkernel/hookspecs.py, the source of truth (tests/test_repository.py checks it is current).

    .venv/bin/python docs/gen_hooks.py

The docstrings are reStructuredText, in the template of :data:`clkernel.hookspecs.SECTIONS`; this renders them
as Markdown: inline literals and roles become code (events and registration hooks link to their section), the
template's sections become bold labels, ``.. versionadded::`` a note. Each event shows its frequency, ranks and
result from ``SPEC``, and its summary exactly as ``clkernel hooks`` prints it.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import clkernel.hookspecs as hookspecs
from clkernel.hookspecs import (
    EVENTS, REGISTRATION_FREQUENCY, REGISTRATION_HOOKS, SPEC, RegistrationHooks, TrainingEvents, hook_doc,
    spec_arguments, spec_summary,
)

TARGET = Path(__file__).with_name("hooks.md")
HOOKS = {*EVENTS, *REGISTRATION_HOOKS}
_LITERAL = re.compile(r"``(.+?)``", re.S)
_ROLE = re.compile(r":(?:py:)?([a-z]+):`(~?)([^`]+)`")
_VERSION = re.compile(r"\.\. versionadded:: (\S+)")


def _role(m: re.Match[str]) -> str:
    role, short, target = m.groups()
    name = target.rsplit(".", 1)[-1] if short else target
    if role in ("func", "meth") and target in HOOKS:
        return f"[`{name}`](#{target})"
    return f"`{name}`"


def markdown(text: str) -> str:
    """reStructuredText inline markup as Markdown: ````x```` and roles become code, hooks link to their section."""
    parts = _LITERAL.split(text)  # odd indices: the contents of inline literals
    for i, part in enumerate(parts):
        parts[i] = f"`{part}`" if i % 2 else _VERSION.sub(r"*Added in \1.*", _ROLE.sub(_role, part))
    return "".join(parts)


def _paragraphs(text: str) -> str:
    """Paragraphs of reST prose as Markdown, one line each."""
    return "\n\n".join(markdown(" ".join(p.split())) for p in text.strip().split("\n\n")) + "\n"


def _hook(hooks: type, name: str, fires: str, ranks: str, result: str) -> str:
    doc = hook_doc(hooks, name)
    lines = [f'<a id="{name}"></a>', "", f"### `{name}({', '.join(spec_arguments(hooks, name))})`", "",
             spec_summary(hooks, name), "",
             f"- **Fires:** {fires}", f"- **Ranks:** {ranks}", f"- **Result:** {result}",
             *(f"- **`{arg}`:** {markdown(text)}" for arg, text in doc.params.items())]
    for section, text in doc.sections.items():
        lines += ["", f"**{section}:** {markdown(text)}"]
    if doc.version:
        lines += ["", f"*Added in {doc.version}.*"]
    return "\n".join(lines) + "\n"


def _index_row(name: str, fires: str, ranks: str, result: str) -> str:
    return f"| [`{name}`](#{name}) | {fires} | {ranks} | {result.split(':')[0]} |"


def _ranks(name: str) -> str:
    return "rank 0" if SPEC[name].rank_zero else "every rank"


def render() -> str:
    module_doc = inspect.getdoc(hookspecs) or ""
    intro, _, after = module_doc.partition("::\n\n")
    lines = after.splitlines()
    end = next(i for i, line in enumerate(lines) if line and not line.startswith(" "))
    loop, rest = textwrap.dedent("\n".join(lines[:end])).strip(), "\n".join(lines[end:])
    registration = (REGISTRATION_FREQUENCY, "every rank", "ignored")  # as `clkernel hooks` prints them
    parts = [
        "# Hook reference\n",
        "Generated from `clkernel/hookspecs.py` by `docs/gen_hooks.py`; `clkernel hooks` prints the same list, "
        "with the same one-line summaries. Implement only the events you need, each method marked with "
        "`@clkernel.hookimpl`, with exactly the spec's argument names and no default values.\n",
        "| Event | Fires | Ranks | Result |\n|---|---|---|---|",
        *(_index_row(n, SPEC[n].frequency, _ranks(n), SPEC[n].result or "ignored") for n in EVENTS),
        *(_index_row(n, *registration) for n in REGISTRATION_HOOKS),
        "",
        "## The loop\n",
        _paragraphs(intro + ":"),
        f"```text\n{loop}\n```\n",
        _paragraphs(rest),
        "## Training events, in firing order\n",
        _paragraphs(inspect.getdoc(TrainingEvents) or ""),
        *(_hook(TrainingEvents, n, SPEC[n].frequency, _ranks(n), SPEC[n].result or "ignored") for n in EVENTS),
        "## Registration hooks\n",
        _paragraphs(inspect.getdoc(RegistrationHooks) or ""),
        *(_hook(RegistrationHooks, n, *registration) for n in REGISTRATION_HOOKS),
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
