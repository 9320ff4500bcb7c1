"""MLflow with no network, and the store read back with MLflow's own client.

``no_network`` (module-scoped) turns MLflow's telemetry off, clears ``MLFLOW_TRACKING_URI`` and
``MLFLOW_ALLOW_FILE_STORE``, and refuses (and records) any Python socket connection or name look-up outside this
machine; the tests of a module fail at teardown if anything tried to reach the network.

``store(uri)`` is an ``MlflowClient`` over a tracking store, built with ``MLFLOW_ALLOW_FILE_STORE=true`` (what a
person reading a file store back with MLflow 3 sets).
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace
from typing import Any

import pytest

_LOCAL = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "")


def _is_local(host: Any) -> bool:
    return host is None or str(host) in _LOCAL or str(host).startswith("127.")


@pytest.fixture(scope="module")
def no_network() -> Any:
    refused: list[str] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(address: Any) -> None:
        if isinstance(address, tuple) and address and not _is_local(address[0]):
            refused.append(f"connect {address!r}")
            raise ConnectionRefusedError(f"test: network access refused: {address!r}")

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        check(address)
        return connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> Any:
        check(address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local(host):
            refused.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(f"test: name look-up refused: {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID",
                    "MLFLOW_ENABLE_ASYNC_LOGGING"):
            mp.delenv(key, raising=False)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("DO_NOT_TRACK", "true")
        mp.setattr(socket.socket, "connect", guarded_connect)
        mp.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        mp.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        yield SimpleNamespace(refused=refused)
    assert not refused, f"network access was attempted: {refused}"


@pytest.fixture
def store() -> Any:
    """``store(uri)``: an ``MlflowClient`` reading the tracking store at ``uri``."""

    def open_store(uri: str) -> Any:
        from mlflow.tracking import MlflowClient

        previous = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        try:
            return MlflowClient(uri)
        finally:
            if previous is None:
                del os.environ["MLFLOW_ALLOW_FILE_STORE"]
            else:
                os.environ["MLFLOW_ALLOW_FILE_STORE"] = previous

    return open_store


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
