"""Every command and code block of README.md and docs/*.md runs as written.

Blocks are collected by their fence:

* ```python: each document's blocks run in order, in one fresh interpreter per document, sharing one namespace as
  a reader pasting them into one session would. Tracebacks name the document and its line numbers.
* ```console: lines starting with ``$ `` are commands (the other lines are the output shown); ```bash: every
  line is a command (``\\`` continues a line, ``#`` starts a comment). Each command runs with ``bash -c`` in the
  block's own temporary folder, the interpreter's ``bin`` folder (the ``.venv``) first on ``PATH``.
  Blocks of the same commands, with the same files, run once (the README's ``torchrun`` line is
  docs/distributed.md's).
* ```toml: must parse; a block whose first line is ``# FILE`` (``# run.toml``) is written as ``FILE`` into the
  folder of every command of the same document, so ``clkernel run --config run.toml`` finds it.
* ```text: pseudocode, not run. A block of any other language (or none) fails: fence it as one of these.

Every block must exit 0. Real datasets come from ``<repo>/../shared/data`` (``$CLKERNEL_DATA``, which the
benchmarks read; nothing downloads): a block naming an MNIST-family benchmark skips, saying why, when that folder
is absent, and so do the Python blocks after it in its document, which may use what it defined.

The subprocesses run two at a time (they are single-threaded: ``OMP_NUM_THREADS=1``), started when the first
test of this module asks for one, so the file takes about as long as its two slowest documents.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from attrs import frozen

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
BIN = Path(sys.executable).parent  # the .venv's bin: `clkernel`, `python`, `pip` of the interpreter under test
TIMEOUT = 600  # seconds per subprocess
WORKERS = 2

# The README's two set-up commands are not run here: CI runs them, exactly as written (.ci/run), and
# tests/test_repository.py checks that it does. The first creates .venv and installs everything (the test suite
# runs inside that .venv); the second runs the whole test suite, this file included.
SETUP_COMMANDS = {
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt && .venv/bin/clkernel run"),
    ("README.md", ".venv/bin/python -m pytest"),
}

RUN = {"python", "console", "bash"}
SKIP = {"text": "```text: pseudocode or output, not run"}
#: Benchmarks that read the real MNIST / Fashion-MNIST files (the other classic ones are not in shared/data).
REAL_DATA = re.compile(r"\b(split-f?mnist|permuted-mnist|rotated-mnist)\b")
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


@frozen
class Block:
    document: str  # path relative to the repository root
    index: int  # position among the document's fenced blocks, from 0
    language: str
    code: str
    line: int  # line of the document where the code starts (after the fence)

    @property
    def id(self) -> str:
        return f"{Path(self.document).name}-{self.index}-{self.language or 'nolang'}"

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line} (```{self.language} block {self.index})"

    @property
    def file_name(self) -> str | None:
        """``FILE`` when the block's first line is ``# FILE``: the block is that file's content."""
        m = re.fullmatch(r"#\s*(\S+\.\w+)\s*", self.code.split("\n", 1)[0])
        return m.group(1) if m else None

    @property
    def needs_real_data(self) -> bool:
        return bool(REAL_DATA.search(self.code))

    def commands(self) -> list[str]:
        """The shell commands of a console or bash block, continuation lines joined."""
        lines = self.code.splitlines()
        if self.language == "console":
            out, i = [], 0
            while i < len(lines):
                if lines[i].startswith("$ "):
                    command = lines[i][2:]
                    while command.endswith("\\") and i + 1 < len(lines):
                        i += 1
                        command += "\n" + lines[i]
                    out.append(command)
                i += 1
            return out
        out, current = [], ""
        for line in lines:
            current += ("\n" if current else "") + line
            if line.endswith("\\"):
                continue
            if current.strip() and not current.strip().startswith("#"):
                out.append(current.strip())
            current = ""
        if current.strip():
            out.append(current.strip())
        return out


def collect(document: Path) -> list[Block]:
    text = document.read_text()
    blocks = []
    for i, m in enumerate(FENCE.finditer(text)):
        line = text.count("\n", 0, m.start(2)) + 1
        blocks.append(Block(str(document.relative_to(ROOT)), i, m.group(1).lower(), m.group(2), line))
    return blocks


BLOCKS = [b for doc in DOCUMENTS for b in collect(doc)]


def _data_available() -> bool:
    return all((SHARED_DATA / name / "raw").is_dir() for name in ("MNIST", "FashionMNIST"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", CLKERNEL_DATA=str(SHARED_DATA), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    return env


# --------------------------------------------------------------------------- what runs in the subprocesses

# Runs a document's Python blocks in one namespace; writes one result per block that ran to argv[2] (JSON).
# Each block is compiled under the document's path, shifted to its line, so tracebacks show the document's lines.
DRIVER = textwrap.dedent("""
    import json, sys, traceback
    blocks = json.load(open(sys.argv[1]))
    sys.path.insert(0, "")
    namespace, results = {"__name__": "__main__"}, []
    for block in blocks:
        print(f"===== {block['where']}", flush=True)
        try:
            exec(compile("\\n" * (block["line"] - 1) + block["code"], block["path"], "exec"), namespace)
        except SystemExit as e:
            if e.code not in (None, 0):
                results.append({"ok": False, "error": traceback.format_exc()})
                break
            results.append({"ok": True})
        except BaseException:
            results.append({"ok": False, "error": traceback.format_exc()})
            break
        else:
            results.append({"ok": True})
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    json.dump(results, open(sys.argv[2], "w"))
""")


def _tail(text: str, n: int = 6000) -> str:
    return text if len(text) <= n else "[...]\n" + text[-n:]


def run_python_document(blocks: list[Block], folder: Path) -> dict[int, tuple[bool, str]]:
    """Run ``blocks`` (one document's, in order) in one interpreter; ``{index: (ok, message)}`` for those run."""
    folder.mkdir(parents=True, exist_ok=True)
    spec, results = folder / ".blocks.json", folder / ".results.json"
    spec.write_text(json.dumps([{"code": b.code, "line": b.line, "path": str(ROOT / b.document), "where": b.where}
                                for b in blocks]))
    try:
        proc = subprocess.run([sys.executable, "-c", DRIVER, str(spec), str(results)], cwd=folder, env=_env(),
                              capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        return {b.index: (False, f"timed out after {TIMEOUT} s; output:\n{_tail(str(e.stdout or ''))}")
                for b in blocks}
    output = _tail(proc.stdout + proc.stderr)
    ran = json.loads(results.read_text()) if results.is_file() else []
    out: dict[int, tuple[bool, str]] = {}
    for block, result in zip(blocks, ran):
        out[block.index] = (True, "") if result["ok"] else (False, f"{result['error']}\noutput:\n{output}")
    if len(ran) < len(blocks):
        failed = next((b for b, r in zip(blocks, ran) if not r["ok"]), None)
        reason = (f"not run: {failed.where} failed before it" if failed else
                  f"not run: the interpreter exited with {proc.returncode}\noutput:\n{output}")
        for block in blocks[len(ran):]:
            out[block.index] = (False, reason)
    return out


def run_commands(block: Block, folder: Path, files: dict[str, str]) -> tuple[bool, str]:
    """Run each command of ``block`` in ``folder`` (``files`` written there first); stop at the first failure."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    log = []
    for command in block.commands():
        try:
            proc = subprocess.run(["bash", "-c", command], cwd=folder, env=_env(), capture_output=True, text=True,
                                  timeout=TIMEOUT)
        except subprocess.TimeoutExpired as e:
            return False, f"$ {command}\ntimed out after {TIMEOUT} s\n{_tail(str(e.stdout or ''))}"
        log.append(f"$ {command}  (exit {proc.returncode})")
        if proc.returncode != 0:
            return False, f"$ {command}\nexited with {proc.returncode}\n{_tail(proc.stdout + proc.stderr)}"
    return True, "\n".join(log)


# --------------------------------------------------------------------------- scheduling

def _skip_reason(block: Block) -> str | None:
    if block.language in SKIP:
        return SKIP[block.language]
    if block.language in {"bash", "console"}:
        commands = block.commands()
        if commands and all((Path(block.document).name, c) in SETUP_COMMANDS for c in commands):
            return ("README set-up command: CI runs it exactly as written (.ci/run), checked by "
                    "tests/test_repository.py")
    if block.language in RUN and block.needs_real_data and not _data_available():
        return f"needs the real MNIST / Fashion-MNIST files, not found in {SHARED_DATA}"
    return None


class Runner:
    """Runs the selected blocks' subprocesses in a pool as soon as it is created; tests wait on the results."""

    def __init__(self, blocks: list[Block], folder: Path) -> None:
        self.pool = ThreadPoolExecutor(max_workers=WORKERS)
        self.futures: dict[tuple[str, int], Future[Any]] = {}
        self.skips: dict[tuple[str, int], str] = {}
        by_doc: dict[str, list[Block]] = {}
        for b in blocks:
            by_doc.setdefault(b.document, []).append(b)
        jobs: list[tuple[list[Block], Any]] = []
        shell: dict[tuple[Any, ...], list[Block]] = {}  # the same commands with the same files run once
        for doc, doc_blocks in by_doc.items():
            name, every = Path(doc).stem, [b for b in BLOCKS if b.document == doc]
            files = {b.file_name: b.code for b in every if b.file_name and b.language not in RUN}
            python, skipped_before = [], None  # all the document's Python blocks run, in one namespace
            for b in [b for b in every if b.language == "python"]:
                reason = skipped_before or _skip_reason(b)
                if reason:
                    self.skips[(doc, b.index)] = reason
                    skipped_before = skipped_before or f"follows {b.where}, skipped: {reason}"
                else:
                    python.append(b)
            if python and any(b.language == "python" for b in doc_blocks):
                jobs.append((python, lambda p=python, n=name: run_python_document(p, folder / f"{n}-python")))
            for b in doc_blocks:
                if b.language in {"bash", "console"}:
                    reason = _skip_reason(b)
                    if reason:
                        self.skips[(doc, b.index)] = reason
                    elif (key := (tuple(b.commands()), tuple(sorted(files.items())))) in shell:
                        shell[key].append(b)  # covered by the job of the first such block
                    else:
                        shell[key] = [b]
                        jobs.append((shell[key], partial(run_commands, b, folder / f"{name}-{b.index}", files)))
        jobs.sort(key=lambda job: not any(b.needs_real_data for b in job[0]))  # the long ones first
        for covered, job in jobs:
            future = self.pool.submit(job)
            for b in covered:
                self.futures[(b.document, b.index)] = future

    def result(self, block: Block) -> tuple[bool, str]:
        key = (block.document, block.index)
        if key in self.skips:
            pytest.skip(self.skips[key])
        result = self.futures[key].result()
        return result[block.index] if isinstance(result, dict) else result


@pytest.fixture(scope="module")
def runner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    selected = [item.callspec.params["block"] for item in request.session.items
                if item.module is request.module and "block" in getattr(getattr(item, "callspec", None),
                                                                        "params", {})]
    r = Runner(selected, tmp_path_factory.mktemp("docs"))
    yield r
    r.pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- the tests

def test_documents_have_blocks():
    assert (ROOT / "README.md").is_file() and len(DOCUMENTS) > 1
    assert any(b.language == "python" for b in BLOCKS) and any(b.language == "console" for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_block_runs_as_written(block: Block, runner: Runner) -> None:
    if block.language in SKIP:
        pytest.skip(SKIP[block.language])
    if block.language == "toml":
        try:
            tomllib.loads(block.code)
        except tomllib.TOMLDecodeError as e:
            pytest.fail(f"{block.where}: not valid TOML: {e}")
        return
    assert block.language in RUN, (
        f"{block.where}: a block fenced as ```{block.language} is neither run nor skipped; fence it as "
        f"python, console, bash, toml or text")
    if block.language == "console":
        assert block.commands(), f"{block.where}: a console block needs at least one `$ ` command line"
    ok, message = runner.result(block)
    assert ok, f"{block.where} failed:\n{message}"
