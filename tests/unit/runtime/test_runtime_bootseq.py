"""The boot sequence end to end against a fake root: good input, bad input, idempotency."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from runtime_testlib import PEM, PEM_B64, FakeBin, FakeRoot, pythonpath_env

from supernode_runtime.status import render_text

TLS_CONTEXT = {
    "FL_SUPERLINK_ADDRESS": "10.0.0.5",
    "FL_TLS_ENABLED": "YES",
    "FL_SUPERLINK_CA_CERT": PEM_B64,
}
STEP_LINE = re.compile(r"^\[step (\d)/7\] [a-z-]+: (ok|warning|error|skipped)( .*)?$")


def step_outcomes(log: str) -> dict[int, str]:
    out = {}
    for line in log.splitlines():
        m = STEP_LINE.match(line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def test_good_boot_logs_seven_numbered_steps(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context({"ONEAPP_FL_SUPERLINK_ADDRESS": "sl.example:9092"})
    result = fake_root.boot()
    assert result.ok
    assert step_outcomes(fake_root.log()) == {
        1: "ok",
        2: "ok",
        3: "skipped",
        4: "ok",
        5: "skipped",
        6: "ok",
        7: "skipped",
    }
    status = fake_root.status()
    assert [s["name"] for s in status["steps"]] == [
        "read-context",
        "validate-variables",
        "tls-material",
        "superlink-discovery",
        "gpu-detection",
        "launch-spec",
        "onegate-report",
    ]
    assert status["supernode_will_start"] is True
    assert status["launch_spec"] == str(fake_root.paths.launch_spec)
    assert status["build"]["supernode_image"] == "flwr-supernode:1.41.0"
    assert fake_root.spec()["argv"] == result.argv
    assert "--insecure" in fake_root.spec()["argv"]


def test_boot_is_idempotent(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context(
        {
            "FL_SUPERLINK_ADDRESS": "10.0.0.5",
            "FL_TLS_ENABLED": "YES",
            "FL_SUPERLINK_CA_CERT": PEM_B64,
        }
    )
    fake_root.boot()
    first_argv = fake_root.spec()["argv"]
    first_ca = fake_root.paths.tls_ca.read_bytes()
    fake_root.boot()
    assert fake_root.spec()["argv"] == first_argv
    assert fake_root.paths.tls_ca.read_bytes() == first_ca
    leftovers = [p.name for p in fake_root.paths.run_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temp files left behind by atomic writes


def test_tls_material_written_0644_and_removed_when_tls_turned_off(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context(
        {
            "FL_SUPERLINK_ADDRESS": "10.0.0.5",
            "FL_TLS_ENABLED": "yes",
            "FL_SUPERLINK_CA_CERT": PEM_B64,
        }
    )
    assert fake_root.boot().ok
    ca = fake_root.paths.tls_ca
    assert ca.read_text() == PEM
    assert ca.stat().st_mode & 0o777 == 0o644
    argv = fake_root.spec()["argv"]
    assert "--root-certificates" in argv and "--insecure" not in argv
    assert f"type=bind,source={ca},target=/app/certificates/ca.pem,readonly" in argv
    fake_root.write_context({"FL_SUPERLINK_ADDRESS": "10.0.0.5"})
    assert fake_root.boot().ok
    assert not ca.exists()
    assert "--insecure" in fake_root.spec()["argv"]


def test_bad_input_stops_supernode_and_names_the_variable(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_bin.gpu_present()
    fake_root.write_context({"FL_SUPERLINK_ADDRESS": "10.0.0.5"})
    assert fake_root.boot().ok
    assert fake_root.paths.launch_spec.exists()
    # Re-contextualised with a bad value: the previous launch spec must go away.
    fake_root.write_context(
        {
            "FL_SUPERLINK_ADDRESS": "10.0.0.5",
            "ONEAPP_FL_GPU_ENABLED": "YES",
            "ONEAPP_FL_GPU_MEMORY_FRACTION": "1.5",
        }
    )
    result = fake_root.boot()
    assert not result.ok
    assert result.argv is None
    assert not fake_root.paths.launch_spec.exists()
    outcomes = step_outcomes(fake_root.log())
    assert outcomes[2] == "error"
    assert outcomes[3] == outcomes[4] == outcomes[5] == outcomes[6] == "skipped"
    assert fake_bin.calls() == []  # GPU detection did not run
    status = fake_root.status()
    assert status["supernode_will_start"] is False
    [err] = status["errors"]
    assert err["variable"] == "ONEAPP_FL_GPU_MEMORY_FRACTION"
    assert err["value"] == "'1.5'"
    assert "at most 1" in err["accepted"]
    log = fake_root.log()
    assert "ERROR: ONEAPP_FL_GPU_MEMORY_FRACTION='1.5': out of range" in log
    text = fake_root.paths.status_text.read_text()
    motd = fake_root.paths.motd_file.read_text()
    for doc in (text, motd):
        assert "NOT started" in doc
        assert "ONEAPP_FL_GPU_MEMORY_FRACTION" in doc


def test_status_masks_secrets(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context(
        {
            "FL_SUPERLINK_ADDRESS": "10.0.0.5",
            "FL_TLS_ENABLED": "YES",
            "FL_SUPERLINK_CA_CERT": PEM_B64,
        },
        token="super-secret-token",
    )
    fake_root.boot()
    for path in (
        fake_root.paths.status_json,
        fake_root.paths.status_text,
        fake_root.paths.motd_file,
    ):
        content = path.read_text()
        assert PEM_B64 not in content
        assert "BEGIN CERTIFICATE" not in content
        assert "super-secret-token" not in content
    assert "super-secret-token" not in fake_root.log()
    assert "redacted" in fake_root.status()["config"]["FL_SUPERLINK_CA_CERT"]["value"]


def test_status_text_escapes_control_characters(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context({"FL_SUPERLINK_ADDRESS": "10.0.0.5", "FL_ISOLATION": "\x1b[2Jboom"})
    fake_root.boot()
    for path in (fake_root.paths.status_text, fake_root.paths.motd_file):
        content = path.read_text()
        assert "\x1b" not in content
        assert "FL_ISOLATION" in content


def test_unreadable_lines_are_warnings_unless_they_could_be_ours(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context({}, raw_text="FL_SUPERLINK_ADDRESS='10.0.0.5'\nthis is garbage\nX=unquoted\n")
    result = fake_root.boot()
    assert result.ok
    outcomes = step_outcomes(fake_root.log())
    assert outcomes[1] == "warning" and outcomes[2] == "ok"
    warnings = " | ".join(fake_root.status()["warnings"])
    assert "line 2" in warnings and "line 3" in warnings


@pytest.mark.parametrize(
    "text",
    [
        "FL_SUPERLINK_ADDRESS='10.0.0.5'\nFL_GPU_ENABLE='YES'\n",  # unknown FL_ name
        "FL_SUPERLINK_ADDRESS='10.0.0.5'\nfl_tls_enabled='YES'\n",  # lower case: was silently dropped
        "FL_SUPERLINK_ADDRESS='10.0.0.5'\nFL_TLS_ENABLED ='YES'\n",
        "\ufeffFL_TLS_ENABLED='YES'\nFL_SUPERLINK_ADDRESS='10.0.0.5'\n",
        "FL_SUPERLINK_ADDRESS='10.0.0.5'\nX='unterminated\nFL_TLS_ENABLED='YES'\n",
        "FL_SUPERLINK_ADDRESS='10.0.0.5'\nexport FL_TLS_ENABLED='YES'\n",
        "FL_SUPERLINK_ADDRESS='10.0.0.5'\nFL_TLS_ENABLED=\"$YES\"\n",
    ],
)
def test_tls_setting_that_cannot_be_read_stops_the_supernode(fake_root: FakeRoot, fake_bin: FakeBin, text: str) -> None:
    """Regression: each of these booted with --insecure (and boot --strict exited 0)."""
    fake_root.write_context({}, raw_text=text)
    result = fake_root.boot()
    assert not result.ok
    assert result.argv is None
    assert not fake_root.paths.launch_spec.exists()
    assert fake_root.status()["supernode_will_start"] is False


def test_unreadable_context_blocks_start(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.paths.context_device.mkdir(parents=True)
    fake_bin.add("mount", '/bin/echo "mount: permission denied" >&2\nexit 1')
    fake_root.write_override({"FL_SUPERLINK_ADDRESS": "10.0.0.5"})
    result = fake_root.boot()
    assert not result.ok
    assert not fake_root.paths.launch_spec.exists()
    assert step_outcomes(fake_root.log())[1] == "error"
    assert "permission denied" in fake_root.status()["errors"][0]["message"]


def test_missing_build_info_blocks_start(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.paths.build_info.unlink()
    fake_root.write_context({"FL_SUPERLINK_ADDRESS": "10.0.0.5"})
    result = fake_root.boot()
    assert not result.ok
    assert step_outcomes(fake_root.log())[6] == "error"
    assert not fake_root.paths.launch_spec.exists()


def test_render_text_summarises_steps_and_config(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context({"FL_SUPERLINK_ADDRESS": "10.0.0.5", "FL_LOG_LEVEL": "debug"})
    fake_root.boot()
    text = render_text(fake_root.status())
    assert "SuperNode container: will start" in text
    assert "[step 6/7] launch-spec: ok" in text
    assert "FL_LOG_LEVEL = DEBUG" in text
    assert "SuperLink: 10.0.0.5:8000" in text


def test_boot_cli_exit_codes(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context({"FL_SUPERLINK_ADDRESS": "10.0.0.5", "FL_ISOLATION": "bad"})
    root = str(fake_root.paths.root)
    env = pythonpath_env({"PATH": str(fake_bin.dir)})

    def boot(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supernode_runtime", "boot", "--root", root, *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    lenient = boot()
    assert lenient.returncode == 0  # VM stays up; the error is recorded
    assert "[step 2/7] validate-variables: error 1 invalid: FL_ISOLATION" in lenient.stdout
    assert boot("--strict").returncode == 2
    assert not fake_root.paths.launch_spec.exists()
    status = subprocess.run(
        [sys.executable, "-m", "supernode_runtime", "status", "--root", root],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 1
    assert "FL_ISOLATION" in status.stdout
