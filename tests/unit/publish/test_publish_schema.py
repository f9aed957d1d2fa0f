"""The marketplace JSON Schema against the real published files in ../shared/reference/marketplace/:
each is accepted, and each is rejected once any required field is removed or mistyped."""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from publish_testlib import REFERENCE_DIR, REFERENCE_YAMLLINT, need_reference

from appliance_build.publish import marketplace
from appliance_build.publish.cli import main

REFERENCE_FILES = sorted(p.name for p in REFERENCE_DIR.glob("*.yaml")) if REFERENCE_DIR.is_dir() else []
FILE_PARAMS = REFERENCE_FILES or ["(reference directory absent)"]

Path_ = tuple[str | int, ...]


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def required_paths(document: Any, node: dict[str, Any], root: dict[str, Any], prefix: Path_ = ()) -> Iterator[Path_]:
    """Every required field the schema names, followed into nested objects and the first array item."""
    node = _resolve(node, root)
    if node.get("type") == "array" and isinstance(document, list) and document:
        yield from required_paths(document[0], node["items"], root, (*prefix, 0))
        return
    if not isinstance(document, dict):
        return
    for name in node.get("required", []):
        yield (*prefix, name)
        child = node.get("properties", {}).get(name)
        if child is not None:
            yield from required_paths(document[name], child, root, (*prefix, name))


@functools.cache
def _parsed(name: str) -> Any:
    return yaml.safe_load((REFERENCE_DIR / name).read_text())


def _load(name: str) -> Any:
    """A fresh copy of a reference file's data (skips when the reference directory is absent)."""
    need_reference()
    return copy.deepcopy(_parsed(name))


def _cases() -> list[tuple[str, Path_]]:
    cases = []
    for name in REFERENCE_FILES:
        document = yaml.safe_load((REFERENCE_DIR / name).read_text())
        for path in required_paths(document, marketplace.schema(), marketplace.schema()):
            cases.append((name, path))
    return cases or [("(reference directory absent)", ("name",))]


CASES = _cases()


def _parent(document: Any, path: Path_) -> Any:
    node = document
    for part in path[:-1]:
        node = node[part]
    return node


def mistyped(value: Any) -> Any:
    """A value of another JSON type than `value`."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return ",".join(map(str, value))
    return [value]


# The fields every marketplace appliance must have; the schema may require more, never less.
MUST_REQUIRE = {
    *[
        (f,)
        for f in (
            "name",
            "version",
            "publisher",
            "description",
            "short_description",
            "tags",
            "format",
            "creation_time",
            "os-id",
            "os-release",
            "os-arch",
            "hypervisor",
            "opennebula_version",
            "opennebula_template",
            "logo",
            "images",
        )
    ],
    ("opennebula_template", "context"),
    ("opennebula_template", "cpu"),
    ("opennebula_template", "memory"),
    ("images", 0, "url"),
    ("images", 0, "size"),
    ("images", 0, "checksum"),
    ("images", 0, "checksum", "md5"),
    ("images", 0, "checksum", "sha256"),
}


def test_every_required_path_is_tested() -> None:
    need_reference()
    for name in REFERENCE_FILES:
        paths = {path for file, path in CASES if file == name}
        assert paths >= MUST_REQUIRE, f"{name}: not required by the schema: {MUST_REQUIRE - paths}"


@pytest.mark.parametrize("name", FILE_PARAMS)
def test_schema_accepts_every_published_file(name: str) -> None:
    assert marketplace.schema_problems(_load(name)) == []


@pytest.mark.parametrize("name", FILE_PARAMS)
def test_check_accepts_every_published_file(name: str) -> None:
    need_reference()
    assert marketplace.check_file(REFERENCE_DIR / name) == []


@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}:{marketplace.field_path(p)}" for n, p in CASES])
def test_schema_rejects_a_removed_or_mistyped_required_field(name: str, path: Path_) -> None:
    field = marketplace.field_path(path)
    removed = _load(name)
    del _parent(removed, path)[path[-1]]
    assert f"{field}: required field missing" in marketplace.schema_problems(removed)

    wrong = _load(name)
    parent = _parent(wrong, path)
    parent[path[-1]] = mistyped(parent[path[-1]])
    problems = marketplace.schema_problems(wrong)
    assert any(p.startswith(f"{field}: ") for p in problems), problems


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("images", 0, "checksum", "sha256"), "not-a-hash", "images[0].checksum.sha256: 'not-a-hash' does not match"),
        (("images", 0, "url"), "ftp://x/y.qcow2", "images[0].url:"),
        (("os-release",), 12, "os-release: 12 is not of type 'string'"),
        (("creation_time",), "yesterday", "creation_time: 'yesterday' is not of type 'integer'"),
        (("opennebula_template", "context", "network"), "yes", "opennebula_template.context.network:"),
    ],
)
def test_schema_names_the_field(path: Path_, value: Any, expected: str) -> None:
    document = _load("debian-12-x86_64.yaml")
    _parent(document, path)[path[-1]] = value
    assert any(p.startswith(expected) for p in marketplace.schema_problems(document))


def test_user_inputs_must_match_inputs_order_and_context() -> None:
    document = _load("vllm-x86_64.yaml")
    template = document["opennebula_template"]
    template["inputs_order"] = template["inputs_order"].replace(",ONEAPP_VLLM_SLEEP_MODE", "")
    del template["context"]["oneapp_vllm_api_port"]
    problems = marketplace.consistency_problems(document)
    assert any(p.startswith("opennebula_template.inputs_order: ") for p in problems)
    assert any(p.startswith("opennebula_template.context.oneapp_vllm_api_port: ") for p in problems)


def test_yamllint_settings_are_the_marketplace_ones() -> None:
    need_reference()
    ours = yaml.safe_load(marketplace.YAMLLINT_CONFIG.read_text())
    theirs = yaml.safe_load(REFERENCE_YAMLLINT.read_text())
    assert ours == theirs
    assert "OpenNebula/marketplace" in marketplace.YAMLLINT_CONFIG.read_text()


def test_schema_file_is_valid_json_schema() -> None:
    data = json.loads(marketplace.SCHEMA_PATH.read_text())
    assert data["$schema"].endswith("2020-12/schema")
    assert marketplace.schema()["required"]


def test_check_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_reference()
    good = REFERENCE_DIR / "nim-x86_64.yaml"
    bad = tmp_path / "nim-bad.yaml"
    text = good.read_text()
    bad.write_text(re.sub(r"sha256: [0-9a-f]{64}", "sha256: 12345abc", text))
    assert main(["check", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok"
    assert main(["check", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: images[0].checksum.sha256: '12345abc' does not match" in err
    assert main(["check", str(tmp_path / "missing.yaml")]) == 2


def test_check_cli_reports_yamllint_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_reference()
    text = (REFERENCE_DIR / "debian-12-x86_64.yaml").read_text()
    sloppy = tmp_path / "sloppy.yaml"
    sloppy.write_text(text.removeprefix("---\n").replace("tags:\n", "tags:   \n"))
    assert main(["check", str(sloppy)]) == 2
    err = capsys.readouterr().err
    assert "yamllint:" in err
    assert "(trailing-spaces)" in err
    assert "(document-start)" in err
