"""W&B offline, with no network, and a reader of the run files it writes.

``offline`` (module-scoped) sets W&B's offline mode and its folders through environment variables, points W&B's
server address and every HTTP proxy at a local socket that records each connection, and refuses (and records)
any Python socket connection or name look-up outside this machine; the tests of a module fail at teardown if
anything tried to reach the network.

``read_run(folder)`` reads ``run-*.wandb`` of one local W&B run folder. The file is W&B's record log: a 7-byte
header (``:W&B``, a 2-byte magic, a version byte), then LevelDB's log format (32 KiB blocks of records, each with a
7-byte header: CRC-32 of the type byte and the data, little-endian length, type 1 full / 2 first / 3 middle /
4 last), each record one ``wandb.proto.wandb_internal_pb2.Record``. It is read here with the standard library and
W&B's published protobuf classes, independently of the logger.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

_LOCAL = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "")


class _Recorder:
    """A TCP server on 127.0.0.1 that accepts and records every connection (and answers nothing)."""

    def __init__(self) -> None:
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.connections: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, address = self.server.accept()
            except OSError:
                continue
            self.connections.append(address)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.server.close()


def _host(address: Any) -> str | None:
    return address[0] if isinstance(address, tuple) and address else None


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """W&B in offline mode, its folders in a temporary folder, and the network watched (see the module doc)."""
    home = tmp_path_factory.mktemp("wandb-home")
    recorder = _Recorder()
    refused: list[str] = []
    proxy = f"http://127.0.0.1:{recorder.port}"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true",
           "WANDB_DISABLE_CODE": "true", "WANDB__DISABLE_STATS": "true", "WANDB_BASE_URL": proxy,
           "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
           "WANDB_DATA_DIR": str(home / "data"), "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
           "WANDB_DIR": str(home / "default-dir"), "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy,
           "http_proxy": proxy, "https_proxy": proxy, "ALL_PROXY": proxy}
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(address: Any) -> None:
        host = _host(address)
        if host is not None and host not in _LOCAL and not str(host).startswith("127."):
            refused.append(f"connect {address!r}")
            raise ConnectionRefusedError(f"test: network access refused: {address!r}")

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        check(address)
        return connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> Any:
        check(address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and str(host) not in _LOCAL and not str(host).startswith("127."):
            refused.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(f"test: name look-up refused: {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        for key in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "NO_PROXY",
                    "no_proxy"):
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setattr(socket.socket, "connect", guarded_connect)
        mp.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        mp.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        yield SimpleNamespace(home=home, refused=refused, recorder=recorder)
    recorder.close()
    assert not refused, f"network access was attempted: {refused}"
    assert not recorder.connections, f"W&B connected to its server or a proxy: {recorder.connections}"


# ---------------------------------------------------------------------------------------------- the run file

_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` file, as bytes, each checked against its CRC."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file (header {data[:7]!r})"
    records, pending, pos = [], b"", 7
    while pos < len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert len(chunk) == length, f"{path}: truncated record at byte {pos}"
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"{path}: bad CRC at byte {pos}"
        pos += 7 + length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            records.append(pending + chunk)
    return records


def _items_to_dict(items: Any) -> dict[str, Any]:
    """``HistoryItem`` / ``SummaryItem`` list -> nested dict (``nested_key`` ["a", "b"] -> ``{"a": {"b": v}}``)."""
    out: dict[str, Any] = {}
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)
    return out


def read_run(folder: Path, timeout: float = 20.0) -> SimpleNamespace:
    """One local W&B run folder read back: ``run`` (the RunRecord: ``run_id``, ``project``, ``display_name``,
    ``tags``, ``resume``), ``config`` (dict, without W&B's ``_wandb`` key), ``history`` (one dict per logged row),
    ``summary`` (the last value of every key), ``exit_code``, ``files`` (its ``files/`` folder).

    ``run.finish()`` returns before W&B's writer (another process) has written the file out: this waits, up to
    ``timeout`` seconds, until the file ends with the run's exit record.
    """
    deadline = time.monotonic() + timeout
    while True:
        run = _read_run(folder)
        if run.exit_code is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def _read_run(folder: Path) -> SimpleNamespace:
    from wandb.proto import wandb_internal_pb2

    (path,) = folder.glob("run-*.wandb")
    run, history, summary, exit_code, config = None, [], {}, None, {}
    for raw in wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            history.append(_items_to_dict(record.history.item))
        elif kind == "summary":
            summary.update(_items_to_dict(record.summary.update))
        elif kind == "exit":
            exit_code = record.exit.exit_code
    config.pop("_wandb", None)
    return SimpleNamespace(run=run, config=config, history=history, summary=summary, exit_code=exit_code,
                           files=folder / "files")


@pytest.fixture
def wandb_files() -> Any:
    """``wandb_files.read_run(folder)`` and ``wandb_files.records(path)``."""
    return SimpleNamespace(read_run=read_run, records=wandb_records)



@pytest.fixture
def clkernel_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``clkernel_run(*args)``: ``clkernel --log-format json run *args`` in this process (no second start-up of
    torch and the tracker), returning ``(exit code, stdout, stderr)``; the logging set-up ``main`` changes is
    restored after."""
    from clkernel.testing import cli_in_process

    monkeypatch.delenv("CLKERNEL_DATA", raising=False)
    with cli_in_process() as main:
        def run(*args: str) -> tuple[int, str, str]:
            capsys.readouterr()
            code = main("--log-format", "json", "run", *args)
            out, err = capsys.readouterr()
            return code, out, err

        yield run
