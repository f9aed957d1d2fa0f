"""CLI: check-context exit codes and JSON, variables output, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_testlib import PEM_B64, pythonpath_env

from supernode_runtime.cli import main
from supernode_runtime.context_parser import format_context
from supernode_runtime.variables import VARIABLES


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supernode_runtime", *args],
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_context_valid_prints_effective_config(tmp_path: Path) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_text(
        format_context(
            {
                "ONEAPP_FL_SUPERLINK_ADDRESS": "10.0.0.5",
                "ONEAPP_FL_TLS_ENABLED": "YES",
                "ONEAPP_FL_SUPERLINK_CA_CERT": PEM_B64,
                "FL_GPU_ENABLED": "yes",
            }
        )
    )
    proc = run_cli("check-context", str(ctx))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True
    assert doc["errors"] == []
    assert doc["config"]["FL_SUPERLINK_ADDRESS"]["value"] == "10.0.0.5:8000"
    assert doc["config"]["FL_GPU_ENABLED"]["value"] is True
    assert PEM_B64 not in proc.stdout
    assert doc["superlink_discovery"] == "static"


def test_check_context_invalid_exits_2_with_errors(tmp_path: Path) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_text("FL_CUDA_VISIBLE_DEVICES='0;reboot'\nFL_MAX_RETRIES='-1'\n")
    proc = run_cli("check-context", str(ctx))
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    assert {e["variable"] for e in doc["errors"]} == {"FL_CUDA_VISIBLE_DEVICES", "FL_MAX_RETRIES"}
    assert "ERROR: FL_CUDA_VISIBLE_DEVICES='0;reboot'" in proc.stderr


def test_check_context_nonexistent_path_exits_2(tmp_path: Path) -> None:
    proc = run_cli("check-context", str(tmp_path / "missing.sh"))
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr
    assert json.loads(proc.stdout)["ok"] is False


def test_check_context_reports_parse_warnings_but_passes(tmp_path: Path) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_text("junk line\nFL_LOG_LEVEL='warning'\nFL_SUPERLINK_ADDRESS='10.0.0.5'\n")
    proc = run_cli("check-context", str(ctx))
    assert proc.returncode == 0, proc.stdout
    assert "line 1" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["config"]["FL_LOG_LEVEL"]["value"] == "WARNING"
    assert doc["will_start"] is True
    assert any("line 1" in w for w in doc["warnings"])


def test_check_context_fl_like_malformed_line_is_an_error(tmp_path: Path) -> None:
    """Regression: this test used to require exit 0 for a malformed line; a malformed
    line that could hold one of our variables (here TLS) now stops the boot."""
    ctx = tmp_path / "context.sh"
    ctx.write_text("FL_SUPERLINK_ADDRESS='10.0.0.5'\nFL_TLS_ENABLED ='YES'\n")
    proc = run_cli("check-context", str(ctx))
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["will_start"] is False
    [err] = doc["errors"]
    assert err["variable"] == "FL_TLS_ENABLED"
    assert f"{ctx}: line 2:" in err["message"]


def test_check_context_predicts_onegate_need(tmp_path: Path) -> None:
    """Regression: an empty file and a OneGate-only file got ok: true."""
    ctx = tmp_path / "context.sh"
    ctx.write_text("")
    proc = run_cli("check-context", str(ctx))
    assert proc.returncode == 2
    [err] = json.loads(proc.stdout)["errors"]
    assert err["variable"] == "FL_SUPERLINK_ADDRESS"
    assert "the boot needs OneGate discovery (ONEGATE_ENDPOINT, VMID and a token), not present here" in err["message"]
    ctx.write_text("ONEGATE_ENDPOINT='http://10.0.0.1:5030'\nVMID='7'\n")
    assert run_cli("check-context", str(ctx)).returncode == 2  # no token.txt next to it
    (tmp_path / "token.txt").write_text("tok\n")
    proc = run_cli("check-context", str(ctx))
    assert proc.returncode == 0, proc.stdout
    doc = json.loads(proc.stdout)
    assert doc["will_start"] is False
    assert doc["depends_on"] == ["FL_SUPERLINK_ADDRESS is empty: the boot will look the SuperLink up through OneGate"]


def test_check_context_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_text("FL_ISOLATION='bad'\nFL_SUPERLINK_ADDRESS='10.0.0.5'\n")
    override = tmp_path / "override"
    override.write_text("FL_ISOLATION='process'\n")
    assert main(["check-context", str(ctx), "--override", str(override)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["FL_ISOLATION"]["value"] == "process"


def test_variables_user_inputs_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["variables", "--user-inputs"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {v.oneapp_name for v in VARIABLES}
    assert main(["variables", "--user-inputs", "--plain-names"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {v.name for v in VARIABLES}


def test_variables_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["variables", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| Variable |")
    for var in VARIABLES:
        assert f"`{var.oneapp_name}`" in out


def test_status_without_boot_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--root", str(tmp_path)]) == 3
    assert "has not run" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
