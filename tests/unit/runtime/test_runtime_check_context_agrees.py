"""check-context is the boot: the same corpus through ``check-context`` and ``boot --root``."""

from __future__ import annotations

import base64
import json

import pytest
from runtime_testlib import PEM, PEM_B64, FakeBin, FakeRoot

from supernode_runtime.cli import main

ADDR = "FL_SUPERLINK_ADDRESS='10.0.0.5'\n"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"
PASSWORD = "correct-horse-battery-staple-42"

CORPUS = {
    "valid static": ADDR + "FL_NODE_CONFIG='a=1 b=\"x\"'\n",
    "valid TLS": ADDR + f"FL_TLS_ENABLED='YES'\nFL_SUPERLINK_CA_CERT='{PEM_B64}'\n",
    "valid, GPU requested": ADDR + "FL_GPU_ENABLED='YES'\n",
    "valid double quotes": 'FL_SUPERLINK_ADDRESS="10.0.0.5"\nFL_LOG_LEVEL="debug"\n',
    "empty file": "",
    "OneGate variables, no token": "ONEGATE_ENDPOINT='http://10.0.0.1:5030'\nVMID='7'\n",
    "invalid value": ADDR + "FL_ISOLATION='thread'\n",
    "BOM before TLS": "\ufeffFL_TLS_ENABLED='YES'\n" + ADDR,
    "lower-case TLS": ADDR + "fl_tls_enabled='YES'\n",
    "space before =": ADDR + "FL_TLS_ENABLED ='YES'\n",
    "export": ADDR + "export FL_TLS_ENABLED='YES'\n",
    "unterminated quote": ADDR + "NOTE='oops\nFL_TLS_ENABLED='YES'\n",
    "double quotes with $": ADDR + 'FL_NODE_CONFIG="a=$HOME"\n',
    "TLS without CA": ADDR + "FL_TLS_ENABLED='YES'\n",
    "CA without TLS setting": ADDR + f"FL_SUPERLINK_CA_CERT='{PEM_B64}'\n",
    "private key as CA": ADDR
    + "FL_TLS_ENABLED='YES'\nFL_SUPERLINK_CA_CERT='"
    + base64.b64encode((KEY_PEM + PEM).encode()).decode()
    + "'\n",
    "node config as TOML path": ADDR + "FL_NODE_CONFIG='a=1#x.toml'\n",
    "oversized node config": ADDR + "FL_NODE_CONFIG='a=\"" + "x" * 140_000 + "\"'\n",
    "unknown FL variable": ADDR + "FL_TLS_ENABLE='YES'\n",
    "malformed secret line": ADDR + f"ROOT_PASSWORD={PASSWORD}\n",
    "garbage line": ADDR + "this is not a statement\n",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_check_context_and_boot_agree(
    name: str, fake_root: FakeRoot, fake_bin: FakeBin, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fake_root.write_context({}, token=None, raw_text=CORPUS[name])
    root = str(fake_root.paths.root)
    check_code, out = run(capsys, "check-context", str(path), "--root", root)
    check = json.loads(out)
    assert not fake_root.paths.status_json.exists()  # check-context wrote nothing
    assert not fake_root.paths.tls_ca.exists()
    boot_code, _ = run(capsys, "boot", "--root", root, "--strict")
    status = fake_root.status()

    assert check["ok"] is (not status["errors"])
    assert check_code == boot_code == (0 if check["ok"] else 2)
    assert check["errors"] == status["errors"]
    assert check["config"] == status["config"]
    assert (
        check["steps"][:2]
        == [  # reading and validation: identical lines
            f"[step {s['number']}/{s['total']}] {s['name']}: {s['outcome']}"
            + (f" {s['detail']}" if s["detail"] else "")
            for s in status["steps"][:2]
        ]
    )
    if check["ok"]:
        assert status["supernode_will_start"] is True
        assert check["will_start"] is (not check["depends_on"])
    else:
        assert status["supernode_will_start"] is False and check["will_start"] is False
        assert not fake_root.paths.launch_spec.exists()


def test_the_corpus_has_both_outcomes(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    outcomes = set()
    for text in CORPUS.values():
        fake_root.write_context({}, token=None, raw_text=text)
        outcomes.add(fake_root.boot().ok)
    assert outcomes == {True, False}


def test_no_value_of_an_unknown_or_secret_key_in_any_output(
    fake_root: FakeRoot, fake_bin: FakeBin, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: a malformed ROOT_PASSWORD line showed 26 characters of the password
    in warnings, status.json, status.txt and the login banner."""
    text = (
        ADDR
        + f"ROOT_PASSWORD={PASSWORD}\n"
        + f"fl_secret_thing='{PASSWORD}'\n"
        + f"X='1' {PASSWORD}\n"
        + f"FL_SUPERLINK_CA_CERT={PASSWORD}\n"
        + f"{PASSWORD}\n"
    )
    path = fake_root.write_context({}, raw_text=text)
    run(capsys, "check-context", str(path))
    check_out = capsys.readouterr()
    fake_root.boot()
    outputs = {
        "log": fake_root.log(),
        "check-context": check_out.out + check_out.err,
        "status.json": fake_root.paths.status_json.read_text(),
        "status.txt": fake_root.paths.status_text.read_text(),
        "motd": fake_root.paths.motd_file.read_text(),
    }
    for where, content in outputs.items():
        for piece in ("horse", "battery", "staple", "correct"):
            assert piece not in content, where
    status = fake_root.status()
    shown = json.dumps(status)
    assert "ROOT_PASSWORD" in shown and "line 2" in shown
    assert "fl_secret_thing" in shown and "FL_SUPERLINK_CA_CERT" in shown
