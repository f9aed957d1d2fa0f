"""Rendering: HCL for both Packer targets (structure checked with python-hcl2),
`packer validate` with the installed Packer, `cloud-init schema` on the seed."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import jinja2
import pytest

from appliance_build import config, plan
from appliance_build.artifacts import ImageArtifacts
from appliance_build.errors import ConfigError
from appliance_build.stages import packer, render
from appliance_build.vm.firmware import Uefi

LEGACY = render.PackerTarget.parse("1.6.6")
PLUGIN = render.PackerTarget.parse("1.11.2")
FIRMWARE = Uefi(Path("/fw/OVMF_CODE_4M.fd"), Path("/fw/OVMF_VARS_4M.fd"), Path("/fw/OVMF.fd"))
SHIPPED = config.available()  # every images/*.toml, the Debian 12 CPU image too


def runs_for(tmp_path: Path, image: config.ImageConfig, target: render.PackerTarget) -> plan.Runs:
    request = plan.Request(image, target, toolkit=None, firmware=FIRMWARE)
    return plan.runs(request, ImageArtifacts(tmp_path / image.name, image.name))


def do_render(
    tmp_path: Path,
    name: str,
    target: render.PackerTarget,
    key: str = "ssh-ed25519 AAAA test",
    *,
    image: config.ImageConfig | None = None,
    layer: bool = False,
) -> render.Rendered:
    """Render one run of the build the way plan.write() does: the configure run, or the layer."""
    image = image or config.load(name)
    runs = runs_for(tmp_path, image, target)
    run = runs.layer if layer else runs.configure
    assert run is not None
    return render.render(
        image, run, target=target, ssh_public_key=key, firmware=FIRMWARE, instance_id=render.new_instance_id()
    )


def _plain(value: Any) -> Any:
    """python-hcl2 8 keeps HCL's quotes around strings and keys: drop them."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return _plain(hcl2.load(handle))  # type: ignore[no-any-return]


def source_block(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (source,) = doc["source"]
    return source["qemu"][name]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("target", [LEGACY, PLUGIN], ids=["packer-1.6", "packer-1.11"])
def test_hcl_structure(tmp_path: Path, name: str, target: render.PackerTarget) -> None:
    image = config.load(name)
    doc = parse(do_render(tmp_path, name, target).hcl)
    src = source_block(doc, name)
    assert src["disk_image"] is True
    # Packer 1.6's overlay lacks -F (QEMU >= 6.1 refuses it): it copies the base instead
    assert src["use_backing_file"] is target.plugin
    assert src["headless"] is True
    assert src["machine_type"] == image.disk.machine
    assert src["cd_label"] == "cidata"
    assert src["ssh_username"] == render.BUILD_USER
    assert "ssh_password" not in src
    qemuargs = src["qemuargs"]
    assert ["-serial", f"file:{tmp_path / name / 'logs' / 'packer-console.log'}"] in qemuargs
    uefi = image.disk.firmware == "uefi"
    if target.plugin:
        (block,) = doc["packer"]
        plugin = block["required_plugins"][0]["qemu"]
        assert plugin["source"] == "github.com/hashicorp/qemu"
        assert src.get("efi_boot", False) is uefi
        if uefi:
            assert src["efi_firmware_code"] == str(FIRMWARE.code)
            assert src["efi_firmware_vars"] == str(FIRMWARE.vars)
        assert not any(arg[0] == "-bios" for arg in qemuargs)
    else:
        assert "packer" not in doc, "Packer 1.6 rejects a packer {} block with required_plugins"
        assert not any(k.startswith("efi_") for k in src)
        assert (["-bios", str(FIRMWARE.combined)] in qemuargs) is uefi
    assert src["iso_url"] == str(runs_for(tmp_path, image, target).configure.disk)  # the cached layer
    assert "/layer/" in src["iso_url"]
    assert ["-cpu", "${var.cpu_model}"] in qemuargs  # the build passes what it probed
    (build,) = doc["build"]
    shells = [p["shell"] for p in build["provisioner"] if "shell" in p]
    scripts = [Path(s).name for shell in shells for s in shell["scripts"]]
    assert scripts == [
        *[s for s in image.provision if "50" <= s < "90"],
        "inventory.sh",
        *[s for s in image.provision if s >= "90"],
    ]
    downloads = [p["file"] for p in build["provisioner"] if "file" in p and p["file"].get("direction") == "download"]
    assert downloads and downloads[0]["destination"].endswith("inventory.json")


@pytest.mark.parametrize("name", SHIPPED)
def test_layer_hcl_runs_the_steps_below_50_on_the_base(tmp_path: Path, name: str) -> None:
    image = config.load(name)
    doc = parse(do_render(tmp_path, name, LEGACY, layer=True).hcl)
    src = source_block(doc, f"{name}-layer")
    assert src["iso_url"].endswith("disk.qcow2") and "/base/" in src["iso_url"]
    assert src["output_directory"] == str(tmp_path / name / "layer" / "packer-output")
    assert ["-serial", f"file:{tmp_path / name / 'logs' / 'packer-layer-console.log'}"] in src["qemuargs"]
    (build,) = doc["build"]
    scripts = [Path(s).name for p in build["provisioner"] if "shell" in p for s in p["shell"]["scripts"]]
    assert scripts == [s for s in image.provision if s < "50"]
    assert not any(p["file"].get("direction") == "download" for p in build["provisioner"] if "file" in p)
    env = [e for p in build["provisioner"] if "shell" in p for e in p["shell"]["environment_vars"]]
    assert not [e for e in env if e.startswith("FLOWER_TOOLKIT_")]  # the toolkit is not the layer's


def test_cloud_init_seed_has_only_the_build_key(tmp_path: Path) -> None:
    import yaml

    rendered = do_render(tmp_path, "supernode-cpu", LEGACY, key="ssh-ed25519 AAAAkey build")
    text = rendered.user_data.read_text()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    (user,) = data["users"]
    assert user["name"] == render.BUILD_USER and user["lock_passwd"] is True
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAAkey build"]
    assert data["ssh_pwauth"] is False
    meta = yaml.safe_load(rendered.meta_data.read_text())
    assert meta["instance-id"].startswith("flower-build-")


def test_strict_undefined(tmp_path: Path) -> None:
    env = render.environment()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ nothing_here }}").render()


@pytest.mark.parametrize("text", ["1.7.0", "1.8.5", "1.5.0", "latest"])
def test_unsupported_packer_targets(text: str) -> None:
    with pytest.raises(ConfigError, match="packer target"):
        render.PackerTarget.parse(text)


def test_packer_version_parsing() -> None:
    assert render.PackerTarget.parse("Packer v1.6.6\n").plugin is False
    assert render.PackerTarget.parse("1.9").plugin is True


@pytest.mark.parametrize("name", SHIPPED)
def test_packer_validate_installed_target(tmp_path: Path, name: str) -> None:
    """The installed Packer accepts what is rendered for it (real `packer validate`)."""
    target = render.detect_packer()
    image = config.load(name)
    runs = runs_for(tmp_path, image, target)
    with packer.build_keypair("test") as key:
        for run in (runs.layer, runs.configure):
            assert run is not None
            run.upload_dir.mkdir(parents=True)  # the build makes it before validating
            rendered = render.render(
                image, run, target=target, ssh_public_key=key.public, firmware=FIRMWARE, instance_id="i-test"
            )
            result = subprocess.run(
                [
                    "packer",
                    "validate",
                    f"-var=ssh_private_key_file={key.private}",
                    "-var=accelerator=kvm",
                    "-var=cpu_model=host",
                    str(rendered.hcl),
                ],
                capture_output=True,
                text=True,
                env=packer.packer_env(),
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr


def test_cloud_init_schema(tmp_path: Path) -> None:
    rendered = do_render(tmp_path, "supernode-cpu", LEGACY)
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(rendered.user_data)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid" in result.stdout


def test_cloud_init_schema_rejects_a_broken_seed(tmp_path: Path) -> None:
    """The schema check above is able to fail."""
    bad = tmp_path / "user-data"
    bad.write_text("#cloud-config\nusers: 7\nssh_pwauth: maybe\n")
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


# --- escaping: a value stays one string, whatever it holds ---------------------------
# Validation (tests/unit/pipeline/test_definition_values.py) refuses these at load time;
# the filters are the second line, so they are tested with the values themselves.

HOSTILE = [
    "plain",
    '"',
    "\\",
    '\\"',
    'x"\n  ssh_password = "x',
    '30m"\n}\nvariable "evil" {\n  default = "x',
    "${var.ssh_private_key_file}",
    "$${x}",
    "$$${x}",
    "%{ if true }x%{ endif }",
    "%%{x}",
    "$",
    "%",
    "x$",
    "\r\n\t",
    "\x00\x01\x1b[31m\x7f",
    "\u0085\u00a0\u2028\u2029\ufeff",
    "café ☃ 😀",
    "\U000e0001",
    "# comment",
    "// comment",
    "/* comment */",
    "{{ .Vars }}",
    "'",
    "\\u0041\\n",
    "<<EOF\nx\nEOF",
    "",
]


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hcl_string_stays_one_attribute(value: str) -> None:
    literal = render.hcl_string(value)
    assert "\n" not in literal and "\r" not in literal
    doc = hcl2.loads(f'a = {literal}\nb = "canary"\n')
    assert set(doc) == {"a", "b"}
    assert isinstance(doc["a"], str) and doc["b"] == '"canary"'


def test_hcl_string_escapes() -> None:
    assert render.hcl_string('a"b\\c') == '"a\\"b\\\\c"'
    assert render.hcl_string("x\ny\tz\r") == '"x\\ny\\tz\\r"'
    assert render.hcl_string("${x} %{y}") == '"$${x} %%{y}"'
    assert render.hcl_string("\x00\U000e0001") == '"\\u0000\\U000E0001"'
    assert render.hcl_string(Path("/a b")) == '"/a b"'


def test_hcl_string_round_trips_through_packer(tmp_path: Path) -> None:
    """Packer's own HCL parser reads back exactly the value (`packer console`)."""
    variables = "".join(
        f'variable "v{i}" {{\n  type    = string\n  default = {render.hcl_string(v)}\n}}\n'
        for i, v in enumerate(HOSTILE)
    )
    template = tmp_path / "t.pkr.hcl"
    template.write_text(
        variables + 'source "null" "n" {\n  communicator = "none"\n}\nbuild {\n  sources = ["source.null.n"]\n}\n'
    )
    expr = "jsonencode([" + ", ".join(f"var.v{i}" for i in range(len(HOSTILE))) + "])\n"
    result = subprocess.run(
        ["packer", "console", str(template)],
        input=expr,
        capture_output=True,
        text=True,
        env=packer.packer_env(),
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == HOSTILE


def hostile_image(name: str) -> config.ImageConfig:
    """A loaded image with hostile values put in where validation would refuse them."""
    image = config.load(name)
    return dataclasses.replace(
        image,
        description='evil"\n}\nvariable "injected" {\n  default = "x',
        vm=dataclasses.replace(image.vm, ssh_timeout='30m"\n  ssh_password = "x'),
        flower=dataclasses.replace(
            image.flower,
            registry_image='x",\n      "FLOWER_UPLOAD=/tmp/evil',
            local_tag="${var.ssh_private_key_file}",
        ),
    )


@pytest.mark.parametrize("target", [LEGACY, PLUGIN], ids=["packer-1.6", "packer-1.11"])
def test_hostile_values_stay_one_string_in_the_hcl(tmp_path: Path, target: render.PackerTarget) -> None:
    name = "supernode-gpu"
    (tmp_path / "clean").mkdir()
    clean = parse(do_render(tmp_path / "clean", name, target).hcl)
    hcl = do_render(tmp_path / "evil", name, target, image=hostile_image(name)).hcl
    doc = parse(hcl)
    assert set(doc) == set(clean)
    assert [list(v) for v in doc["variable"]] == [list(v) for v in clean["variable"]]
    src, clean_src = source_block(doc, name), source_block(clean, name)
    assert set(src) == set(clean_src)
    assert src["ssh_timeout"] == '30m\\"\\n  ssh_password = \\"x'
    (build,) = doc["build"]
    (clean_build,) = clean["build"]
    for shell, clean_shell in zip(
        [p["shell"] for p in build["provisioner"] if "shell" in p],
        [p["shell"] for p in clean_build["provisioner"] if "shell" in p],
        strict=True,
    ):
        assert len(shell["environment_vars"]) == len(clean_shell["environment_vars"])
        assert [e.split("=", 1)[0] for e in shell["environment_vars"]].count("FLOWER_UPLOAD") == 1
        assert "FLOWER_SUPERNODE_IMAGE=$${var.ssh_private_key_file}" in shell["environment_vars"]
        assert shell["execute_command"] == clean_shell["execute_command"]


def test_execute_command_keeps_packers_template() -> None:
    (phase,) = [p for p in render.configure_phases(config.load("supernode-cpu"), Path("/x")) if p.args]
    assert render.hcl_string(phase.execute_command) == (
        "\"sudo env {{ .Vars }} /bin/bash '{{ .Path }}' " + render.INVENTORY_GUEST + '"'
    )


YAML_HOSTILE = [
    *HOSTILE,
    "yes",
    "no",
    "null",
    "~",
    "1.0",
    "0x10",
    "- x",
    "a: b",
    "#x",
    "&a",
    "*a",
    "!!python/object:os.system",
    "|",
    ">",
    "@",
    "`",
    "%YAML 1.2",
    "---",
    "...",
    "[a, b]",
    "{a: b}",
]


@pytest.mark.parametrize("value", YAML_HOSTILE, ids=repr)
def test_yaml_string_round_trips(value: str) -> None:
    import yaml

    literal = render.yaml_string(value)
    assert "\n" not in literal
    assert yaml.safe_load(f"k: {literal}\nz: 1\n") == {"k": value, "z": 1}
    assert yaml.safe_load(f"- {literal}\n- 1\n") == [value, 1]


def test_hostile_key_stays_one_item_in_the_seed(tmp_path: Path) -> None:
    import yaml

    key = "ssh-ed25519 AAAA x\nssh_pwauth: true\nusers: []"
    data = yaml.safe_load(do_render(tmp_path, "supernode-cpu", LEGACY, key=key).user_data.read_text())
    (user,) = data["users"]
    assert user["ssh_authorized_keys"] == [key]
    assert data["ssh_pwauth"] is False
