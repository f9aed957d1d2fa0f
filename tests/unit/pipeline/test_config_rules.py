"""The definition's rules: each attached to a table the loader reads, naming a key of it, reading
only settings read before it; and the loader runs them on written and on default tables."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from appliance_build import config
from appliance_build.errors import ConfigError
from tests.fixtures.definitions import VALID

TOP = [f.name for f in fields(config.Definition)]


def tables_read() -> dict[type[Any], str]:
    """Each table class the loader reads, and the top-level setting it is read for."""
    out: dict[type[Any], str] = {config.Definition: ""}
    for f in fields(config.Definition):
        parse = f.metadata.get("parse")
        if isinstance(parse, config._Table):
            out[parse.cls] = f.name
    return out


def table_of(setting: str) -> type[Any] | None:
    return next((cls for cls, name in tables_read().items() if name == setting and name), None)


def problems(rules: dict[type[Any], list[config.Rule]]) -> list[str]:
    """What is wrong with how each rule is attached (empty: every rule runs and names a real key)."""
    read_for = tables_read()
    out = []
    for table, table_rules in rules.items():
        for r in table_rules:
            where = f"{table.__name__} rule {r.check.__name__} (key {r.key!r})"
            if table not in read_for:
                out.append(f"{where}: its table is not read by the loader")
                continue
            if table is config.Definition:
                head = r.key.split(".")[0]
                if head not in TOP or head not in r.reads:
                    out.append(f"{where}: must name a top-level setting it reads")
                elif any(p not in TOP[: TOP.index(head) + 1] for p in r.reads):
                    out.append(f"{where}: reads {r.reads}, not all read by then")
                continue
            position = TOP.index(read_for[table])
            others = r.reads[1:]
            if any(p not in TOP[:position] for p in others):
                out.append(f"{where}: reads {others}, not all top-level settings read before {read_for[table]}")
            own = {f.name for f in fields(table)}
            if "." in r.key:
                setting, _, name = r.key.partition(".")
                other = table_of(setting)
                if setting not in others or other is None or name not in {f.name for f in fields(other)}:
                    out.append(f"{where}: names no field of a table it reads")
            elif r.key and r.key not in own:
                out.append(f"{where}: {r.key!r} is not a field of {table.__name__}")
    return out


def test_every_rule_is_attached_to_a_table_and_names_its_key() -> None:
    assert config.RULES, "no rules registered"
    assert problems(config.RULES) == []


@pytest.mark.parametrize(
    ("table", "rule", "complaint"),
    [
        (config.DiskConfig, config.Rule("sizes", lambda disk: None, ("disk",)), "not a field of DiskConfig"),
        (config.Rule, config.Rule("key", lambda r: None, ("r",)), "not read by the loader"),
        (config.DiskConfig, config.Rule("size", lambda disk, gpu: None, ("disk", "gpu")), "read before disk"),
        (config.GpuConfig, config.Rule("base.nope", lambda gpu, base: None, ("gpu", "base")), "names no field"),
        (config.Definition, config.Rule("files", lambda gpu: None, ("gpu",)), "top-level setting it reads"),
    ],
)
def test_a_misattached_rule_is_found(table: type[Any], rule: config.Rule, complaint: str) -> None:
    found = problems({table: [rule]})
    assert len(found) == 1 and complaint in found[0], found


def write(tmp_path: Path, text: str) -> None:
    (tmp_path / "img.toml").write_text(text)


def test_rules_run_on_a_default_table_and_name_their_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """VALID has no [vm] table: VmConfig's rules still hold for its defaults; "" names the table."""
    write(tmp_path, VALID)
    config.load("img", tmp_path)
    monkeypatch.setitem(config.RULES, config.VmConfig, [config.Rule("cpus", lambda vm: f"{vm.cpus} cpus", ("vm",))])
    with pytest.raises(ConfigError, match=r"img\.toml: key 'vm\.cpus': 2 cpus\Z"):
        config.load("img", tmp_path)
    monkeypatch.setitem(
        config.RULES, config.VmConfig, [config.Rule("", lambda vm, base: base.provider, ("vm", "base"))]
    )
    with pytest.raises(ConfigError, match=r"key 'vm': debian-12\Z"):
        config.load("img", tmp_path)


def test_rules_run_in_declaration_order(tmp_path: Path) -> None:
    """A [gpu] table on a cpu image with toolkit_source = "local" and no path breaks two rules;
    the first declared (the variant) is the one reported."""
    names = [r.check.__name__ for r in config.RULES[config.GpuConfig]]
    assert names.index("_gpu_needs_gpu_variant") < names.index("_local_toolkit_needs_path")
    write(tmp_path, VALID + '[gpu]\ntoolkit_source = "local"\n')
    with pytest.raises(ConfigError, match=r"key 'gpu': a \[gpu\] table needs variant = \"gpu\""):
        config.load("img", tmp_path)
