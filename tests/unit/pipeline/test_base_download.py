"""ubuntu-24.04 provider: download verified against SHA256SUMS, from a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from appliance_build.config import BaseConfig
from appliance_build.errors import BuildError
from appliance_build.stages.base import ubuntu

IMAGE_NAME = "noble-server-cloudimg-amd64.img"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def publish(root: Path, content: bytes, listed_hash: str | None = None) -> None:
    (root / IMAGE_NAME).write_bytes(content)
    digest = listed_hash or hashlib.sha256(content).hexdigest()
    (root / "SHA256SUMS").write_text(f"0000  other.img\n{digest} *{IMAGE_NAME}\n")


def test_matching_download_is_kept(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    publish(root, b"qcow2 bytes" * 1000)
    target = tmp_path / "cloud.img"
    sha = ubuntu.download_verified(f"{url}/{IMAGE_NAME}", f"{url}/SHA256SUMS", target)
    assert target.read_bytes() == b"qcow2 bytes" * 1000
    assert sha == hashlib.sha256(target.read_bytes()).hexdigest()


def test_mismatch_is_refused_and_not_kept(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    publish(root, b"tampered", listed_hash="ab" * 32)
    target = tmp_path / "cloud.img"
    with pytest.raises(BuildError, match="checksum mismatch") as err:
        ubuntu.download_verified(f"{url}/{IMAGE_NAME}", f"{url}/SHA256SUMS", target)
    assert "ab" * 32 in str(err.value)
    assert hashlib.sha256(b"tampered").hexdigest() in str(err.value)
    assert not target.exists()
    assert list(tmp_path.glob("cloud.img*")) == []


def test_file_missing_from_sums_is_refused(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    (root / IMAGE_NAME).write_bytes(b"x")
    (root / "SHA256SUMS").write_text("1234  something-else.img\n")
    with pytest.raises(BuildError, match="no line for"):
        ubuntu.download_verified(f"{url}/{IMAGE_NAME}", f"{url}/SHA256SUMS", tmp_path / "c.img")
    assert not (tmp_path / "c.img").exists()


def test_provider_refusal_leaves_no_cache_entry(served: tuple[str, Path], tmp_path: Path) -> None:
    """Through the cached provider: a bad checksum leaves neither entry nor partial entry."""
    from appliance_build.stages import base

    url, root = served
    publish(root, b"tampered", listed_hash="cd" * 32)
    cfg = BaseConfig(provider="ubuntu-24.04", url=f"{url}/{IMAGE_NAME}", sha256sums_url=f"{url}/SHA256SUMS")
    with pytest.raises(BuildError, match="checksum mismatch"):
        base.ensure(cfg, tmp_path / "logs")
    left = sorted(p.name for p in (tmp_path / "cache" / "base").glob("*"))
    assert [name for name in left if not name.endswith(".lock")] == []  # the lock file stays, empty


def test_sums_parsing_accepts_both_forms() -> None:
    text = f"{'a' * 64} *{IMAGE_NAME}\n{'b' * 64}  other.img\n"
    assert ubuntu.expected_sha256(text, IMAGE_NAME) == "a" * 64
    assert ubuntu.expected_sha256(text, "other.img") == "b" * 64
