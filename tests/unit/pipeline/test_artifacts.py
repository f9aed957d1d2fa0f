"""The build/ contract (appliance_build.artifacts): the manifest's one reader refuses what its one
writer would not write, and nothing outside the module builds a path under build/ itself."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance_build import cache
from appliance_build.artifacts import (
    MANIFEST_VERSION,
    BuildTree,
    GpuRecord,
    ImageArtifacts,
    Manifest,
    ManifestError,
    ToolkitRecord,
)
from tests.fixtures.manifests import sample_manifest

REPO = Path(__file__).resolve().parents[3]


def _write(out: ImageArtifacts, doc: dict[str, Any]) -> Path:
    out.root.mkdir(parents=True, exist_ok=True)
    out.manifest.write_text(json.dumps(doc))
    return out.manifest


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_round_trip(variant: str) -> None:
    out = ImageArtifacts.for_image(f"supernode-{variant}")
    out.root.mkdir(parents=True)
    manifest = sample_manifest(out.name, variant)
    manifest.write(out.manifest)
    doc = json.loads(out.manifest.read_text())
    assert next(iter(doc)) == "manifest_version" and doc["manifest_version"] == MANIFEST_VERSION == 2
    assert Manifest.load(out.manifest) == manifest
    assert Manifest.load(out.manifest).as_dict() == doc


def test_the_optional_records_round_trip_too() -> None:
    from appliance_build.artifacts import LayerRecord

    provisioners = {"packer build": {"shell 10-docker-engine.sh": 101.5, "file inventory": 0.4}}
    manifest = replace(sample_manifest(), layer=LayerRecord("f" * 64, cached=True), provisioners_s=provisioners)
    assert Manifest.from_dict(json.loads(json.dumps(manifest.as_dict()))) == manifest


@pytest.mark.parametrize(("version", "said"), [(None, "1"), (1, "1"), (3, "3"), ("2", "'2'")])
def test_another_version_is_refused_naming_the_file_and_the_rebuild(version: Any, said: str) -> None:
    out = ImageArtifacts.for_image("supernode-cpu")
    doc = sample_manifest().as_dict()
    if version is None:
        del doc["manifest_version"]  # as the builds before the field wrote it
    else:
        doc["manifest_version"] = version
    path = _write(out, doc)
    with pytest.raises(ManifestError) as caught:
        Manifest.load(path)
    assert str(caught.value) == (
        f"{path}: manifest_version {said}, this checkout reads 2: rebuild the image (nox -s build_cpu)"
    )


def test_the_rebuild_command_of_another_definition() -> None:
    out = ImageArtifacts.for_image("supernode-cpu-debian12")
    path = _write(out, {**sample_manifest(out.name).as_dict(), "manifest_version": 1})
    with pytest.raises(ManifestError, match=r"rebuild the image \(nox -s build -- supernode-cpu-debian12\)$"):
        Manifest.load(path)


@pytest.mark.parametrize(
    ("section", "field", "message"),
    [
        (None, "artifact", "artifact: required field missing"),
        ("contents", "flwr", "contents.flwr: required field missing"),
        ("builder", "firmware", "builder.firmware: required field missing"),
        ("gpu", "toolkit", "gpu.toolkit: required field missing"),
    ],
)
def test_a_missing_field_is_named(section: str | None, field: str, message: str) -> None:
    out = ImageArtifacts.for_image("supernode-gpu")
    doc = sample_manifest(out.name, "gpu").as_dict()
    del (doc[section] if section else doc)[field]
    path = _write(out, doc)
    with pytest.raises(ManifestError) as caught:
        Manifest.load(path)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("builder.firmware", "efi", "builder.firmware: 'efi' is not one of bios | uefi"),
        ("gpu.toolkit", "absent", 'gpu.toolkit: expected an object, got a string ("absent")'),
        ("gpu.toolkit", {"toolkit": "absent", "version": ""}, "gpu.toolkit.toolkit: unknown field"),
        (
            "gpu.toolkit",
            {"status": "absent", "source": "absent"},
            "gpu.toolkit.absent_reason: required when status is absent",
        ),
        ("gpu.toolkit.status", "present", "gpu.toolkit.status: 'present' is not one of installed | absent"),
        ("gpu.support_ends", "June 2026", "gpu.support_ends: 'June 2026' is not a month (YYYY-MM)"),
        ("gpu.kernel_modules", "closed", "gpu.kernel_modules: 'closed' is not one of open | proprietary"),
        ("artifact.file_bytes", "10", "artifact.file_bytes: expected an integer, got a string"),
        ("contents.flwr", "", "contents.flwr: empty"),
        ("contents.packages", {"jq": 1}, "contents.packages.jq: expected a string, got a number"),
        ("built_at", "2026-07-22T03:04:05", "built_at: '2026-07-22T03:04:05' has no UTC offset"),
        ("gpu", None, "gpu: a gpu image needs a gpu section"),
        ("variant", "tpu", "variant: 'tpu' is not one of cpu | gpu"),
        ("extra", 1, "extra: unknown field"),
    ],
)
def test_a_wrong_value_is_named(field: str, value: Any, message: str) -> None:
    out = ImageArtifacts.for_image("supernode-gpu")
    doc = sample_manifest(out.name, "gpu").as_dict()
    *parents, last = field.split(".")
    section = doc
    for name in parents:
        section = section[name]
    section[last] = value
    path = _write(out, doc)
    with pytest.raises(ManifestError) as caught:
        Manifest.load(path)
    assert str(caught.value).startswith(f"{path}: {message}"), str(caught.value)


def test_not_json_and_no_file() -> None:
    out = ImageArtifacts.for_image("supernode-cpu")
    missing = r"manifest\.json does not exist: build the image first \(nox -s build_cpu\)"
    with pytest.raises(ManifestError, match=missing):
        Manifest.load(out.manifest)
    out.root.mkdir(parents=True)
    out.manifest.write_text("{")
    with pytest.raises(ManifestError, match=r"manifest\.json: not valid JSON"):
        Manifest.load(out.manifest)


def test_the_writer_refuses_what_the_reader_would() -> None:
    """One format: the build cannot write a manifest the reader refuses (checked at construction)."""
    with pytest.raises(ValueError, match="absent_reason: required"):
        ToolkitRecord("absent", "absent")
    with pytest.raises(ValueError, match="version: required when status is installed"):
        ToolkitRecord("installed", "nvidia-repo")
    with pytest.raises(ValueError, match="gpu: a cpu image has no gpu section"):
        replace(sample_manifest(), gpu=sample_manifest("supernode-gpu", "gpu").gpu)
    gpu = sample_manifest("supernode-gpu", "gpu").gpu
    assert isinstance(gpu, GpuRecord)
    assert replace(gpu, support_ends="2026-06").support_ends == "2026-06"


def test_layout() -> None:
    tree = BuildTree.default()
    out = tree.image("supernode-gpu")
    assert out.root == tree.root / "supernode-gpu" and out.qcow2.parent == out.root
    assert out.results == (out.qcow2, out.sha256, out.manifest)
    assert out.tested_record.parent == out.junit.parent == out.boot_times.parent == out.test_results
    assert out.scenario_results("default").parent == out.test_results
    assert out.test_results_previous.parent == out.logs_previous.parent == out.root
    assert tree.bundle("supernode-gpu").parent == tree.publish
    assert len({tree.publish, tree.e2e, tree.measurements, tree.fresh_host, tree.test_results, out.root}) == 6
    assert out.build_command == "nox -s build_gpu"


def test_the_lock_is_the_one_the_build_takes() -> None:
    out = ImageArtifacts.for_image("supernode-cpu")
    with cache.locked(out.root, "test"):
        assert out.lock.is_file()


# --- nothing outside artifacts.py builds a path under build/ ---------------------------------

SCANNED = ["appliance_build", "e2e", "tests", "noxfile.py"]
LAYOUT_NAMES = {
    "manifest.json",
    "test-results",
    "tested-image.json",
    "boot-to-ready.json",
    "inventory.json",
    "logs.previous",
    "test-results.previous",
}
PATH_CALLS = {"Path", "PurePath", "PosixPath", "joinpath", "join"}
ALLOWED = {
    "appliance_build/artifacts.py": "the contract itself",
    "appliance_build/paths.py": "defines build_root(), the root BuildTree reads (FLOWER_BUILD_DIR, else REPO/build)",
    "tests/conftest.py": "points FLOWER_BUILD_DIR, which BuildTree reads, at a directory of each test",
    "tests/unit/pipeline/test_artifacts.py": "this scan, which names what it looks for",
    "tests/unit/pipeline/test_render.py": "checks the HCL's download destination",
    "tests/unit/publish/test_publish_bundle.py": "the bundle's published file names (its documented format)",
    "tests/unit/publish/test_publish_workflow.py": "the CI workflow's upload paths, read from its YAML",
}


def build_paths(tree: ast.AST) -> list[tuple[int, str]]:
    """Where a module builds a build/ path itself: build_root() calls, "build" as a path segment,
    "build/..." strings and the names of the files and directories of the layout."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "build_root":
                found.append((node.lineno, "build_root()"))
            if name in PATH_CALLS and any(isinstance(a, ast.Constant) and a.value == "build" for a in node.args):
                found.append((node.lineno, f'{name}("build", ...)'))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if any(isinstance(side, ast.Constant) and side.value == "build" for side in (node.left, node.right)):
                found.append((node.lineno, '/ "build"'))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            value = node.value
            if value in LAYOUT_NAMES or value.startswith("build/") or "=build/" in value:
                found.append((node.lineno, repr(value[:50])))
    return found


def test_the_scan_finds_what_it_looks_for() -> None:
    sample = (
        'root = build_root() / "supernode-cpu"\nPath("build", image)\nREPO / "build" / "e2e"\n'
        'x = image_dir / "manifest.json"\n"--junitxml=build/test-results/x.xml"\nPath("build/measurements")\n'
    )
    assert sorted(line for line, _ in build_paths(ast.parse(sample))) == [1, 2, 3, 4, 5, 6]
    assert build_paths(ast.parse('sub.add_parser("build")\nprint(f"{out}: manifest.json is old")\n')) == []


def test_nothing_outside_the_contract_builds_a_build_path() -> None:
    problems = []
    for base in SCANNED:
        root = REPO / base
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            rel = str(path.relative_to(REPO))
            if rel in ALLOWED:
                continue
            problems += [f"{rel}:{line}: {what}" for line, what in build_paths(ast.parse(path.read_text()))]
    assert problems == [], "use appliance_build.artifacts (BuildTree, ImageArtifacts) instead:\n" + "\n".join(problems)


def test_every_allowed_file_still_needs_it() -> None:
    stale = [rel for rel in ALLOWED if not build_paths(ast.parse((REPO / rel).read_text()))]
    assert stale == [], f"no longer builds a build/ path, drop it from ALLOWED: {stale}"


def test_vm_modules_do_not_import_the_build() -> None:
    """The accelerator choice lives in vm/accel.py: nothing in vm/ imports back up into build.py."""
    for path in sorted((REPO / "appliance_build" / "vm").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.level == 2 and node.module == "build"), f"{path.name} imports ..build"
                assert node.module != "appliance_build.build", f"{path.name} imports appliance_build.build"
