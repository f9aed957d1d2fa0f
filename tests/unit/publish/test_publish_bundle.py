"""publish(): the bundle of a built and tested fake image, and every refusal."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace

import pytest
import yaml
from publish_testlib import REFERENCE_YAMLLINT, URL_PREFIX, Case, FakeBuild, counted_run, md5, need_reference, sha256

from appliance_build.artifacts import BuildTree, ToolkitRecord
from appliance_build.opennebula_templates import parse_template, render_vm_template, single
from appliance_build.paths import SCRIPTS_DIR
from appliance_build.publish import PublishError, Refused, publish, record_tested_image
from appliance_build.publish import marketplace as mp
from appliance_build.publish.cli import main
from appliance_build.publish.tested import REQUIRED_SCENARIOS
from supernode_runtime.variable_docs import user_input
from supernode_runtime.variables import VARIABLES

Make = Callable[[str], FakeBuild]

BUNDLE_FILES = {
    "{n}.qcow2",
    "{n}.qcow2.sha256",
    "{n}.qcow2.md5",
    "{n}.marketplace.yaml",
    "{n}.tmpl",
    "validate-host-gpu.sh",
    "RELEASE_NOTES.md",
    "manifest.json",
    "artifact.json",
    "SHA256SUMS",
}


def _assert_nothing_left(build: FakeBuild) -> None:
    assert not build.bundle.exists(), f"{build.bundle} left behind"
    leftovers = list(build.tree.publish.glob(f".{build.name}*")) if build.tree.publish.exists() else []
    assert leftovers == []


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_bundle_is_complete_and_consistent(fake_build: Make, variant: str) -> None:
    build = fake_build(variant).tested_and_recorded()
    out = publish(build.name, URL_PREFIX, build.tree)

    assert out == build.bundle
    assert {p.name for p in out.iterdir()} == {f.format(n=build.name) for f in BUNDLE_FILES}
    qcow2 = out / f"{build.name}.qcow2"
    # The built file itself: same bytes (a hard link here), not recompressed.
    assert os.path.samefile(qcow2, build.qcow2) or qcow2.read_bytes() == build.qcow2.read_bytes()
    assert (out / f"{build.name}.qcow2.sha256").read_text() == f"{sha256(qcow2)}  {qcow2.name}\n"
    assert (out / f"{build.name}.qcow2.md5").read_text() == f"{md5(qcow2)}  {qcow2.name}\n"
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    assert len((out / "SHA256SUMS").read_text().splitlines()) == len(BUNDLE_FILES) - 1

    script = out / "validate-host-gpu.sh"
    assert script.read_bytes() == (SCRIPTS_DIR / "validate-host-gpu.sh").read_bytes()
    assert os.access(script, os.X_OK)
    assert json.loads((out / "manifest.json").read_text()) == build.manifest()
    assert (out / f"{build.name}.tmpl").read_text() == render_vm_template(variant, build.name)


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_marketplace_yaml(fake_build: Make, variant: str) -> None:
    build = fake_build(variant).tested_and_recorded()
    out = publish(build.name, URL_PREFIX.rstrip("/"), build.tree, version="1.41.0-1-20260722")
    path = out / f"{build.name}.marketplace.yaml"
    assert mp.check_file(path) == []
    doc = yaml.safe_load(path.read_text())
    qcow2 = out / f"{build.name}.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(qcow2)], capture_output=True, text=True, check=True
        ).stdout
    )

    assert doc["version"] == "1.41.0-1-20260722"
    assert doc["format"] == "qcow2"
    assert doc["os-id"] == "Debian GNU/Linux"
    assert doc["os-release"] == "12"
    assert doc["creation_time"] == 1784689445  # built_at 2026-07-22T03:04:05Z
    (image,) = doc["images"]
    assert image["url"] == f"{URL_PREFIX}{build.name}.qcow2"
    assert image["size"] == info["virtual-size"]
    assert image["checksum"] == {"md5": md5(qcow2), "sha256": sha256(qcow2)}

    template = doc["opennebula_template"]
    assert template["user_inputs"] == {var.oneapp_name.lower(): user_input(var) for var in VARIABLES}
    assert template["inputs_order"] == ",".join(var.oneapp_name for var in VARIABLES)
    for var in VARIABLES:
        assert template["context"][var.oneapp_name.lower()] == f"${var.oneapp_name}"
    assert template["context"]["token"] == "YES"
    assert template["context"]["report_ready"] == "YES"
    if variant == "gpu":
        assert template["os"] == {"arch": "x86_64", "machine": "q35", "firmware": "UEFI"}
        assert template["cpu_model"] == {"model": "host-passthrough"}
        assert template["user_inputs"]["oneapp_fl_gpu_enabled"].startswith("O|boolean|")
        assert template["user_inputs"]["oneapp_fl_gpu_enabled"].endswith("|NO")
        assert template["user_inputs"]["oneapp_fl_cuda_visible_devices"].endswith("|all")
        assert template["user_inputs"]["oneapp_fl_gpu_memory_fraction"].startswith("O|number|")
        assert template["user_inputs"]["oneapp_fl_gpu_memory_fraction"].endswith("|0.8")
        assert "580.126.20" in doc["description"]
        assert (
            "Driver branch R580 from NVIDIA's repository, open kernel modules: NVIDIA supports driver "
            "branch R580 until 2028-06" in doc["description"]
        )
    else:
        assert template["os"] == {"arch": "x86_64"}
        assert "cpu_model" not in template


def test_marketplace_yaml_passes_yamllint_with_the_reference_settings(fake_build: Make) -> None:
    need_reference()
    build = fake_build("gpu").tested_and_recorded()
    out = publish(build.name, URL_PREFIX, build.tree)
    text = (out / f"{build.name}.marketplace.yaml").read_text()
    assert mp.yamllint_problems(text, REFERENCE_YAMLLINT) == []


def test_release_notes(fake_build: Make) -> None:
    build = fake_build("gpu").tested_and_recorded(skipped=2)
    out = publish(build.name, URL_PREFIX, build.tree)
    notes = (out / "RELEASE_NOTES.md").read_text()
    for text in (
        "Debian GNU/Linux 12 (bookworm)",
        "6.1.0-37-amd64",
        "| Docker | 20.10.24+dfsg1 |",
        "| flwr | 1.41.0 |",
        "| NVIDIA driver | 580.126.20 (branch 580, open kernel modules (nvidia-kernel-open-dkms)) |",
        "**NVIDIA driver support (supported):** NVIDIA supports driver branch R580 until 2028-06",
        "The driver of branch R580 comes from NVIDIA's repository.",
        "| NVIDIA Container Toolkit | 1.17.8-1",
        "| packer build | 612.3 s |",
        "| **total** | 660.1 s |",
        "| 14 | 12 | 0 | 0 | 2 |",
        "| default-context | 41.2 s |",
        "64.0 MiB virtual",
        "already carries a Container Toolkit",
        sha256(build.qcow2),
        "`ONEAPP_FL_GPU_MEMORY_FRACTION`",
        "| gpu-passthrough | yes | 2 | 2 | 0 | 0 | 0 |",
        "| toolkit-local-fixture | no | 2 | 0 | 0 | 0 | 2 |",
    ):
        assert text in notes, text
    cpu = fake_build("cpu").tested_and_recorded()
    cpu_notes = (publish(cpu.name, URL_PREFIX, cpu.tree) / "RELEASE_NOTES.md").read_text()
    assert "NVIDIA" not in cpu_notes.split("## Context variables")[0]


def test_gpu_pci_address_goes_into_the_vm_template(fake_build: Make) -> None:
    build = fake_build("gpu").tested_and_recorded()
    out = publish(build.name, URL_PREFIX, build.tree, gpu_pci_address="e1:00.0")
    assert single(parse_template((out / f"{build.name}.tmpl").read_text()), "PCI") == {"SHORT_ADDRESS": "e1:00.0"}
    with pytest.raises(PublishError, match="--gpu-pci-address"):
        publish(build.name, URL_PREFIX, build.tree, gpu_pci_address="0000:e1:00.0")


def test_publishing_again_replaces_the_bundle(fake_build: Make) -> None:
    build = fake_build("cpu").tested_and_recorded()
    first = publish(build.name, URL_PREFIX, build.tree)
    (first / "stray.txt").write_text("from an older run")
    second = publish(build.name, "https://mirror.example.net/x", build.tree)
    assert not (second / "stray.txt").exists()
    assert "https://mirror.example.net/x/supernode-cpu.qcow2" in (second / "artifact.json").read_text()


# --- refusals ---------------------------------------------------------------------------


def test_refuses_when_tests_never_ran(fake_build: Make) -> None:
    build = fake_build("cpu")
    with pytest.raises(Refused, match=r"tests have not been run for this image.*tested-image\.json.*nox -s test_cpu"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def test_refusal_names_the_test_session_of_another_definition(build_root: BuildTree) -> None:
    """supernode-cpu-debian12 is tested by the generic test_image session, not test_cpu."""
    build = FakeBuild(build_root, "supernode-cpu-debian12", "cpu")
    build.make_image()
    with pytest.raises(Refused, match=r"nox -s test_image -- supernode-cpu-debian12\)"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


@pytest.mark.parametrize(
    "cases", [counted_run("cpu", failures=1), counted_run("cpu", errors=2), []], ids=["failure", "errors", "no-tests"]
)
def test_refuses_when_tests_did_not_pass(fake_build: Make, cases: list[Case]) -> None:
    build = fake_build("cpu").tested_and_recorded(cases)
    assert json.loads((build.tested_record).read_text())["passed"] is False
    with pytest.raises(Refused, match="the tests did not pass for this image"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def test_refuses_when_a_different_file_was_tested(fake_build: Make) -> None:
    build = fake_build("cpu").tested_and_recorded()
    tested = sha256(build.qcow2)
    build.make_image(virtual_bytes=128 * 1024 * 1024)  # rebuilt after the tests: consistent, but untested
    with pytest.raises(Refused, match=f"the tests ran on a different file: .*{tested}.*{sha256(build.qcow2)}"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def test_refuses_when_junit_changed_after_the_record(fake_build: Make) -> None:
    build = fake_build("cpu").tested_and_recorded()
    build.write_tests(failures=1)  # a later, failed run that never recorded
    with pytest.raises(Refused, match=r"junit\.xml now reports 10 tests: 9 passed, 1 failures.*failures or errors in"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def _without_toolkit(build: FakeBuild) -> None:
    manifest = build.typed_manifest()
    assert manifest.gpu is not None
    absent = ToolkitRecord("absent", "absent", absent_reason="NVIDIA's repository was unreachable")
    build.write_manifest(replace(manifest, gpu=replace(manifest.gpu, toolkit=absent)))


def test_refuses_a_gpu_image_without_the_toolkit(fake_build: Make) -> None:
    build = fake_build("gpu").tested_and_recorded()
    _without_toolkit(build)
    with pytest.raises(Refused, match="NVIDIA Container Toolkit is absent \\(NVIDIA's repository was unreachable\\)"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


@pytest.mark.parametrize("toolkit", ["absent", {"toolkit": "absent", "version": ""}, None])
def test_refuses_a_toolkit_in_an_older_shape(fake_build: Make, toolkit: object) -> None:
    """The shapes manifest_version 1 wrote are not read as "installed" (nor as anything)."""
    build = fake_build("gpu").tested_and_recorded()
    manifest = build.manifest()
    manifest["gpu"]["toolkit"] = toolkit
    build.write_manifest(manifest)
    with pytest.raises(Refused, match=r"manifest\.json: gpu\.toolkit"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


@pytest.mark.parametrize(
    "driver",
    [
        {"driver_source": "debian", "driver_branch": "550", "support_ends": None, "support_status": "past-support"},
        # built while the branch was supported: publishing asks the table again, for today
        {"driver_branch": "535", "support_ends": "2026-06", "support_status": "supported"},
    ],
)
def test_refuses_a_gpu_image_whose_driver_branch_is_past_support(fake_build: Make, driver: dict[str, object]) -> None:
    build = fake_build("gpu").tested_and_recorded()
    manifest = build.manifest()
    manifest["gpu"].update(driver)
    build.write_manifest(manifest)
    with pytest.raises(Refused, match=r"no longer supports driver branch R5(35|50).*--allow-unsupported-driver"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def test_publishes_a_past_support_branch_with_the_flag_and_says_so(fake_build: Make) -> None:
    build = fake_build("gpu").tested_and_recorded()
    manifest = build.manifest()
    manifest["gpu"].update(
        {
            "driver_source": "debian",
            "driver_branch": "550",
            "kernel_modules": "proprietary",
            "support_ends": None,
            "support_status": "past-support",
        }
    )
    build.write_manifest(manifest)
    out = publish(build.name, URL_PREFIX, build.tree, allow_unsupported_driver=True)
    notes = (out / "RELEASE_NOTES.md").read_text()
    assert "**NVIDIA driver support (past-support):** NVIDIA no longer supports driver branch R550" in notes
    assert "comes from Debian's package" in notes
    doc = yaml.safe_load((out / f"{build.name}.marketplace.yaml").read_text())
    assert "NVIDIA no longer supports driver branch R550" in doc["description"]


def test_refuses_a_gpu_image_without_gpu_section(fake_build: Make) -> None:
    build = fake_build("gpu").tested_and_recorded()
    manifest = build.manifest()
    manifest["gpu"] = None
    build.write_manifest(manifest)
    with pytest.raises(Refused, match="gpu: a gpu image needs a gpu section"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def test_refuses_a_manifest_of_another_version(fake_build: Make) -> None:
    build = fake_build("cpu").tested_and_recorded()
    manifest = build.manifest()
    manifest["manifest_version"] = 1
    build.write_manifest(manifest)
    refusal = r"manifest\.json: manifest_version 1, this checkout reads 2: rebuild the image \(nox -s build_cpu\)"
    with pytest.raises(Refused, match=refusal):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def test_refuses_when_the_sha256_file_disagrees(fake_build: Make) -> None:
    build = fake_build("cpu").tested_and_recorded()
    build.sha_file.write_text(f"{'0' * 64}  {build.qcow2.name}\n")
    with pytest.raises(
        Refused, match=f"checksum mismatch: .* has sha256 {sha256(build.qcow2)} but .*sha256 says 0{{64}}"
    ):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def test_refuses_when_the_manifest_disagrees(fake_build: Make) -> None:
    build = fake_build("cpu").tested_and_recorded()
    manifest = build.manifest()
    manifest["artifact"]["sha256"] = "f" * 64
    build.write_manifest(manifest)
    with pytest.raises(Refused, match=r"checksum mismatch: .* but manifest\.json says f{64}"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def test_refuses_a_file_changed_after_build_and_test(fake_build: Make) -> None:
    build = fake_build("cpu").tested_and_recorded()
    with build.qcow2.open("ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(Refused, match="checksum mismatch"):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def test_a_refusal_also_removes_an_earlier_bundle(fake_build: Make) -> None:
    build = fake_build("cpu").tested_and_recorded()
    publish(build.name, URL_PREFIX, build.tree)
    build.make_image(virtual_bytes=96 * 1024 * 1024)
    with pytest.raises(Refused):
        publish(build.name, URL_PREFIX, build.tree)
    _assert_nothing_left(build)


def test_refuses_an_image_that_was_not_built(build_root: BuildTree) -> None:
    with pytest.raises(Refused, match="does not exist: build the image first \\(nox -s build_gpu\\)"):
        publish("supernode-gpu", URL_PREFIX, build_root)


@pytest.mark.parametrize("prefix", ["", "downloads.example.org/x", "file:///srv/images"])
def test_url_prefix_must_be_http(fake_build: Make, prefix: str) -> None:
    build = fake_build("cpu").tested_and_recorded()
    with pytest.raises(PublishError, match="--url-prefix"):
        publish(build.name, prefix, build.tree)


# --- command line --------------------------------------------------------------------------


def test_cli_publish_and_refusal_exit_codes(fake_build: Make, capsys: pytest.CaptureFixture[str]) -> None:
    build = fake_build("gpu").tested_and_recorded()
    argv = ["publish", build.name, "--url-prefix", URL_PREFIX, "--build-root", str(build.root)]
    assert main(argv) == 0
    assert f"published {build.name}: {build.bundle}" in capsys.readouterr().out
    _without_toolkit(build)
    assert main(argv) == 2
    assert "error: supernode-gpu: manifest.json says the NVIDIA Container Toolkit is absent" in capsys.readouterr().err
    _assert_nothing_left(build)


def test_cli_uses_flower_build_dir(fake_build: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    build = fake_build("cpu").tested_and_recorded()
    monkeypatch.setenv("FLOWER_BUILD_DIR", str(build.root))
    assert main(["publish", build.name, "--url-prefix", URL_PREFIX]) == 0
    assert build.bundle.is_dir()


def test_cli_record_tested(fake_build: Make, capsys: pytest.CaptureFixture[str]) -> None:
    build = fake_build("cpu")
    build.write_tests()
    assert main(["record-tested", build.name, "--build-root", str(build.root)]) == 0
    assert "10 tests: 10 passed, 0 failures, 0 errors, 0 skipped; passed for sha256" in capsys.readouterr().out
    build.write_tests(failures=1)
    assert main(["record-tested", build.name, "--build-root", str(build.root)]) == 1
    assert json.loads((build.tested_record).read_text())["passed"] is False
    (build.results / "junit.xml").unlink()
    assert main(["record-tested", build.name, "--build-root", str(build.root)]) == 2


def test_cli_vm_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vm-template", "gpu", "supernode-gpu", "--gpu-pci-address", "3b:00.0"]) == 0
    assert single(parse_template(capsys.readouterr().out), "PCI") == {"SHORT_ADDRESS": "3b:00.0"}


def test_record_tested_image_file(fake_build: Make) -> None:
    build = fake_build("gpu")
    junit = build.write_tests()
    record = record_tested_image(build.out, junit)
    two = {"tests": 2, "passed": 2, "failed": 0, "errors": 0, "skipped": 0}
    assert record == {
        "sha256": sha256(build.qcow2),
        "junit": "junit.xml",
        "variant": "gpu",
        "passed": True,
        "reasons": [],
        "gpu_passthrough_verified": True,
        "totals": {"tests": 12, "passed": 12, "failed": 0, "errors": 0, "skipped": 0},
        "scenarios": {name: two for name in sorted(REQUIRED_SCENARIOS["gpu"])},
    }
    assert json.loads((build.tested_record).read_text()) == record
