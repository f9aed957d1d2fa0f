"""Fixtures for supernode_runtime tests (helpers live in runtime_testlib)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_testlib import FakeBin, FakeRoot, OneGateServer

from supernode_runtime.paths import Paths


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBin:
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    return FakeBin(directory, tmp_path / "calls.log")


@pytest.fixture
def fake_root(tmp_path: Path) -> FakeRoot:
    root = FakeRoot(Paths.from_root(tmp_path / "root"))
    root.write_build_info()
    return root


@pytest.fixture
def onegate() -> Iterator[OneGateServer]:
    server = OneGateServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)


@pytest.fixture
def closed_port_endpoint() -> str:
    """An http endpoint on a port nothing listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
