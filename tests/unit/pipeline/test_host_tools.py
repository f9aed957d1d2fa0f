"""host-tools.tsv is the one list of host commands: the code may run nothing that is not on it,
setup-host.sh installs exactly its packages, and a missing command is a clear error."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from appliance_build import host_tools
from appliance_build.errors import BuildError

REPO = Path(__file__).resolve().parents[3]
# Host-side code: the pipeline, the e2e harness, the nox sessions and the tests. (supernode_runtime/
# and provision/ run inside the appliance; their commands come from the image, not from this host.)
SCANNED = ["appliance_build", "e2e", "tests", "noxfile.py"]
RUNNERS = {"run", "Popen", "check_output", "check_call", "call", "which"}

# Calls whose command is not a literal: resolved here by hand, so a new one fails this test until
# someone says what it runs.
INDIRECT = {
    "appliance_build/stages/packer.py": {"packer"},  # _packer(): shutil.which("packer")
    "appliance_build/stages/render.py": {"packer"},
    "appliance_build/vm/accel.py": {"qemu-system-x86_64"},  # QEMU, passed as a parameter
    "appliance_build/vm/isos.py": {"xorriso"},
    "appliance_build/vm/host_check.py": {"bash"},
    "tests/unit/scripts/gpu_scripts_support.py": {"bash"},
    "tests/unit/publish/test_publish_workflow.py": {"actionlint"},
    "e2e/superlink.py": set(),  # flower_exe(name): console scripts of this venv's flwr
    "appliance_build/flower/superlink.py": set(),  # exe: flower-superlink, found above
    "appliance_build/host_tools.py": set(),  # shutil.which(tool.name): the table itself
    "tests/unit/runtime/test_runtime_safety.py": set(),  # a canary script the test writes
    "tests/unit/runtime/test_runtime_flwr_contract.py": set(),  # flower-supernode of this venv's flwr
}
# Not commands of the host: this interpreter, the venv's own console scripts (installed by pip from
# pyproject.toml), and fakes the tests write themselves.
NOT_HOST = {"python", "pytest", "ruff", "mypy", "flower-superlink", "actionlint", "bash"}


def _files() -> list[Path]:
    out: list[Path] = []
    for item in SCANNED:
        path = REPO / item
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """`NAME = "cmd"` and `name = shutil.which("cmd")`: name -> command."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        value: ast.expr = node.value
        if isinstance(value, ast.BoolOp):  # shutil.which("x") or fallback
            value = value.values[0]
        if isinstance(value, ast.Call) and ast.unparse(value.func).endswith("which") and value.args:
            value = value.args[0]
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            names.update({t.id: value.value for t in node.targets if isinstance(t, ast.Name)})
    return names


def _list_heads(tree: ast.Module) -> dict[str, ast.expr]:
    """`argv = ["cmd", ...]` anywhere in the module: name -> first element."""
    heads: dict[str, ast.expr] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List) and node.value.elts:
            heads.update({t.id: node.value.elts[0] for t in node.targets if isinstance(t, ast.Name)})
    return heads


def scan(path: Path) -> tuple[set[str], list[str]]:
    """Commands run by `path` (literal or resolvable), and the calls it could not resolve."""
    tree = ast.parse(path.read_text())
    constants, heads = _string_constants(tree), _list_heads(tree)
    found: set[str] = set()
    unresolved: list[str] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = ast.unparse(node.func)
        if func.split(".")[-1] not in RUNNERS or func in {"asyncio.run", "runner.run"}:
            continue
        first: ast.expr | None = node.args[0]
        if isinstance(first, ast.List | ast.Tuple):
            first = first.elts[0] if first.elts else None
        elif isinstance(first, ast.Name) and first.id in heads:
            first = heads[first.id]
        elif not (func.endswith("which") or func == "session.run"):
            continue  # not an argv (e.g. a helper called `run` with other arguments)
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.add(first.value)
        elif isinstance(first, ast.Name) and first.id in constants:
            found.add(constants[first.id])
        elif first is not None and ast.unparse(first) != "sys.executable":  # this interpreter
            unresolved.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(first)}")
    return found, unresolved


def test_every_command_the_code_runs_is_declared() -> None:
    declared = host_tools.commands()
    undeclared: list[str] = []
    unexplained: list[str] = []
    for path in _files():
        found, unresolved = scan(path)
        rel = str(path.relative_to(REPO))
        found |= INDIRECT.get(rel, set())
        undeclared += [f"{rel}: {cmd}" for cmd in sorted(found - declared - NOT_HOST) if "/" not in cmd]
        if unresolved and rel not in INDIRECT:
            unexplained += unresolved
    assert not undeclared, "commands missing from appliance_build/host-tools.tsv:\n" + "\n".join(undeclared)
    assert not unexplained, "calls whose command this test cannot resolve (add to INDIRECT):\n" + "\n".join(unexplained)


def test_the_scan_finds_commands() -> None:
    """The scan itself can fail: it sees the literal, constant and argv-variable forms."""
    found, unresolved = scan(REPO / "appliance_build" / "stages" / "base" / "debian.py")
    assert {"mmdebstrap", "modinfo", "dpkg-query", "qemu-img", "qemu-system-x86_64"} <= found
    assert not unresolved
    found, _ = scan(REPO / "tests" / "unit" / "scripts" / "gpu_scripts_support.py")
    assert "bash" in found


def test_setup_host_installs_exactly_the_table() -> None:
    """setup-host.sh derives its package list from the table (no second list to forget)."""
    text = (REPO / "setup-host.sh").read_text()
    assert "appliance_build/host-tools.tsv" in text
    proc = subprocess.run(
        ["bash", "-c", 'source <(sed -n "/^packages=()/,/^done < /p" setup-host.sh); printf "%s\\n" "${packages[@]}"'],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.split() == host_tools.packages()
    assert {"kmod", "cpio", "mmdebstrap", "qemu-utils", "packer"} <= set(host_tools.packages())


def test_every_stage_named_in_the_code_has_tools() -> None:
    for stage in ("base", "container", "packer", "finalize", "boot", "gpu"):
        assert host_tools.for_stage(stage)
    with pytest.raises(BuildError, match="no host tools are declared for stage 'nope'"):
        host_tools.for_stage("nope")


def test_missing_tool_names_command_and_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(host_tools.MissingToolError) as caught:
        host_tools.require("base")
    message = str(caught.value)
    assert "modinfo (package kmod)" in message
    assert "mmdebstrap (package mmdebstrap)" in message
    assert "apt-get install" in message and "./setup-host.sh" in message


def test_build_cli_exits_2_naming_the_missing_tool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance_build import cli
    from appliance_build.artifacts import ImageArtifacts

    monkeypatch.setenv("PATH", str(tmp_path))  # FLOWER_BUILD_DIR is per test (tests/conftest.py)
    assert cli.main(["build", "supernode-cpu"]) == 2
    err = capsys.readouterr().err
    assert "(package kmod)" in err and "Traceback" not in err
    assert not ImageArtifacts.for_image("supernode-cpu").root.exists()  # checked before any output is touched


def test_the_check_command_lists_missing_tools(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What fresh_host runs in the chroot after setup-host.sh: exit 1 naming what is missing."""
    assert host_tools.main() == 0
    monkeypatch.setenv("PATH", str(tmp_path))
    assert host_tools.main() == 1
    out = capsys.readouterr().out
    assert "MISSING modinfo (kmod)" in out and "not installed:" in out
