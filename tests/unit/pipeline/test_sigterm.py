"""SIGTERM is handled like Ctrl-C, so the context managers holding VMs clean up."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_sigterm_unwinds_like_ctrl_c(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned-up"
    program = textwrap.dedent(f"""
        import time
        from appliance_build.progress import interrupt_on_sigterm
        interrupt_on_sigterm()
        try:
            print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt as exc:
            open({str(marker)!r}, "w").write(str(exc))
    """)
    proc = subprocess.Popen([sys.executable, "-c", program], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert marker.read_text() == f"signal {int(signal.SIGTERM)}"
