"""pyc_check: the build-time check that every module of the container's venv has a valid .pyc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from supernode_container import pyc_check


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "site-packages"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "pkg" / "mod.py").write_text("def f():\n    return 2\n")
    (root / "pkg" / "py2.py").write_text("print 'python 2'\n")  # shipped by some packages, never importable
    return root


def test_missing_pyc_fails_and_compile_fixes_it(tmp_path: Path) -> None:
    root = tree(tmp_path)
    report = pyc_check.check(root)
    assert report.checked == 3
    assert sorted(p.name for p in report.missing) == ["__init__.py", "mod.py"]
    assert [p.name for p in report.uncompilable] == ["py2.py"]
    assert pyc_check.main([str(root)]) == 1
    assert pyc_check.main(["--compile", str(root)]) == 0
    assert not pyc_check.check(root).missing


def test_a_stale_pyc_counts_as_missing(tmp_path: Path) -> None:
    root = tree(tmp_path)
    assert pyc_check.main(["--compile", str(root)]) == 0
    source = root / "pkg" / "mod.py"
    source.write_text("def f():\n    return 3  # changed\n")
    os.utime(source, (1, 1))
    assert [p.name for p in pyc_check.check(root).missing] == ["mod.py"]


def test_a_pyc_of_another_interpreter_counts_as_missing(tmp_path: Path) -> None:
    root = tree(tmp_path)
    assert pyc_check.main(["--compile", str(root)]) == 0
    cached = Path(pyc_check.importlib.util.cache_from_source(str(root / "pkg" / "mod.py")))
    data = bytearray(cached.read_bytes())
    data[0] ^= 0xFF
    cached.write_bytes(bytes(data))
    assert [p.name for p in pyc_check.check(root).missing] == ["mod.py"]


def test_as_the_container_stage_runs_it(tmp_path: Path) -> None:
    """``python -m supernode_container.pyc_check --compile DIR`` (in the rootfs: chroot ... /opt/flwr/bin/python)."""
    root = tree(tmp_path)
    package = Path(pyc_check.__file__).parent
    shutil.copytree(package, root / package.name)
    argv = [sys.executable, "-m", "supernode_container.pyc_check", "--compile", str(root)]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "0 without a valid .pyc, 1 not compilable" in result.stdout
