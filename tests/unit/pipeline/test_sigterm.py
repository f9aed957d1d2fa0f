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


def _main(command: str) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    program = textwrap.dedent(f"""
        import sys, time
        from appliance_build.errors import BuildError, ConfigError
        from appliance_build.progress import run_main

        def command():
            {command}

        sys.exit(run_main(command, interrupted="cleaned up"))
    """)
    return subprocess.Popen(
        [sys.executable, "-c", program], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_run_main_reports_errors_with_exit_2() -> None:
    for raised in ("BuildError('the base failed')", "ConfigError('disk.size: too small')"):
        proc = _main(f"raise {raised}")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and err.startswith("error: ") and "Traceback" not in err, err


def test_run_main_turns_sigterm_into_an_interrupt_that_cleans_up(tmp_path: Path) -> None:
    marker = tmp_path / "finally-ran"
    # "ready" inside the try: a signal right after it must find the finally block in place
    proc = _main(
        f"try:\n                print('ready', flush=True)\n                time.sleep(60)\n"
        f"            finally:\n                open({str(marker)!r}, 'w').close()"
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.strip() == "interrupted: cleaned up"
    assert marker.exists()


def test_both_command_lines_go_through_run_main() -> None:
    """The build and the publish CLI share run_main (errors, Ctrl-C, SIGTERM), neither has its own tail."""
    import ast

    for rel in ("appliance_build/cli.py", "appliance_build/publish/cli.py"):
        tree = ast.parse((REPO / rel).read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        calls = {n.func.id for n in ast.walk(main) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        handlers = [n for n in ast.walk(main) if isinstance(n, ast.ExceptHandler)]
        assert "run_main" in calls and not handlers, rel
