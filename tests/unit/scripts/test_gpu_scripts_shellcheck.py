"""Both GPU validation scripts pass `shellcheck -x` with no findings and are executable."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from gpu_scripts_support import SCRIPTS, VALIDATE_GPU, VALIDATE_HOST_GPU

SCRIPT_PATHS = [VALIDATE_GPU, VALIDATE_HOST_GPU]


def test_shellcheck_clean() -> None:
    proc = subprocess.run(
        ["shellcheck", "-x", *[str(p) for p in SCRIPT_PATHS]],
        cwd=SCRIPTS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPT_PATHS, ids=lambda p: p.name)
def test_script_is_executable_bash(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable"
    first = script.read_text().splitlines()[0]
    assert first == "#!/usr/bin/env bash"
    body = script.read_text()
    # `set -e` would abort at the first failing command, before failures are counted.
    assert "\nset -u -o pipefail\n" in body
    errexit = re.compile(r"^\s*set\s+(-[a-zA-Z]*e|-o\s+errexit)", re.MULTILINE)
    assert not errexit.search(body)
