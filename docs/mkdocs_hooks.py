"""MkDocs hooks (``hooks:`` in mkdocs.yml): the site is the repository's Markdown, its links checked as written.

* The README becomes the home page, and every package's Markdown (``plugins/*/``, ``contrib/*/``: README and
  bench results) a page at its path in the repository, so the links between them and docs/ work on GitHub and
  on the site alike. A link is resolved where its file lies in the repository, then pointed at the page built
  from its target (``docs/tutorial.md`` from the README is ``tutorial.md`` on the site); MkDocs then checks it,
  and ``--strict`` fails the build on a link to a missing page or anchor.
* The events' anchors of the hook reference (docs/hooks.md) are cross-reference targets of mkdocs-autorefs.
* Every name in the ``__all__`` of the packages documented under ``api/`` must have an entry there (mkdocstrings
  leaves out what has no docstring): a public name without one is a warning, so ``--strict`` fails on it.
"""

from __future__ import annotations

import importlib
import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

__all__ = ["on_env", "on_files", "on_page_content", "on_page_markdown"]

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mkdocs.plugins.clkernel")

#: Repository Markdown built as pages besides docs/ (``**`` below a package, outside its tests and metadata).
EXTRA_PAGES = ("README.md", "plugins/*/README.md", "plugins/*/bench/*.md", "contrib/*/README.md",
               "contrib/*/bench/*.md")
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
_API_PAGE = re.compile(r"^api/(?P<module>[\w.]+)\.md$")
_api_ids: dict[str, set[str]] = {}  # API page -> the ids of its entries, from on_page_content to on_env
_api_modules: dict[str, set[str]] = {}  # API page -> the modules rendered on it
_MODULE_HEADING = re.compile(r'<h\d id="([\w.]+)" class="doc doc-heading">\s*<code class="[^"]*doc-symbol-module"')


def _repository_path(file: File) -> str:
    """Where ``file`` lies in the repository, as a POSIX path from its root."""
    return file.src_uri if file.generated_by else f"docs/{file.src_uri}"


def _site_path(repository_path: str) -> str:
    """The page built from the repository file ``repository_path``: docs/ is the site's root."""
    return repository_path.removeprefix("docs/")


def on_files(files: Files, config: Any) -> Files:
    if Path(config.docs_dir).resolve() != ROOT / "docs":  # another site using these hooks (tests/test_site.py)
        return files
    for pattern in EXTRA_PAGES:
        for path in sorted(ROOT.glob(pattern)):
            files.append(File.generated(config, path.relative_to(ROOT).as_posix(), abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Point each relative link at the page built from its target in the repository."""
    source = _repository_path(page.file)

    def relink(m: re.Match[str]) -> str:
        target = m.group(2)
        if re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target):
            return m.group(0)
        path, sep, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        link = posixpath.relpath(_site_path(resolved), posixpath.dirname(page.file.src_uri) or ".")
        return f"{m.group(1)}{link}{sep}{anchor}{m.group(3)}"

    return _LINK.sub(relink, markdown)


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Register each event's anchor of the hook reference with mkdocs-autorefs, so that a docstring's
    ``:func:`after_run``` links to it; keep the entry ids of each API page, for :func:`on_env`."""
    if page.file.src_uri == "hooks.md" and "autorefs" in config.plugins:
        for event in re.findall(r'<a id="(\w+)"></a>', html):
            config.plugins["autorefs"].register_anchor(page, event, event, primary=True)
    if _API_PAGE.match(page.file.src_uri):
        _api_ids[page.file.src_uri] = set(re.findall(r'id="([\w.]+)"', html))
        _api_modules[page.file.src_uri] = set(_MODULE_HEADING.findall(html))
    return html


def on_env(env: Any, config: Any, files: Files) -> Any:
    """Warn about each name in the ``__all__`` of a module on an API page (the page's module, and every module
    rendered there) that has no entry on any API page."""
    ids = set().union(*_api_ids.values())
    for uri in sorted(_api_ids):
        modules = {_API_PAGE.match(uri).group("module"), *_api_modules[uri]}
        for module in sorted(modules):
            for name in getattr(importlib.import_module(module), "__all__", []):
                entry = re.compile(rf"{re.escape(module)}(\.\w+)*\.{name}")
                if not name.startswith("__") and not any(entry.fullmatch(i) for i in ids):
                    log.warning(f"{uri}: public name {module}.{name} has no entry: give it a docstring, or put the "
                                f"module that defines it on an API page")
    _api_modules.clear()
    _api_ids.clear()
    return env
