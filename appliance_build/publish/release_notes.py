"""Release notes (Markdown) of one published image, generated from its manifest and test results."""

from __future__ import annotations

from typing import Any

from supernode_runtime.variable_docs import markdown_table

from .. import nvidia_support
from .marketplace import GPU_UNVERIFIED, ImageFacts, toolkit_version
from .tested import REQUIRED_SCENARIOS, JunitCounts, Verdict


def _size(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return (text or "-").replace("|", "\\|").replace("\n", " ")


def _seconds(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.1f} s"
    if isinstance(value, dict):
        parts = [f"{k} {_seconds(v)}" for k, v in value.items()]
        return ", ".join(parts) or "-"
    return _cell(value)


def render(
    manifest: dict[str, Any],
    image: ImageFacts,
    *,
    version: str,
    junit: JunitCounts,
    verdict: Verdict,
    boot_times: dict[str, Any],
    tested_sha256: str,
) -> str:
    name = str(manifest.get("image") or image.file_name.removesuffix(".qcow2"))
    variant = str(manifest.get("variant"))
    contents = manifest.get("contents") or {}
    builder = manifest.get("builder") or {}
    container = manifest.get("container") or {}
    artifact = manifest.get("artifact") or {}
    lines: list[str] = []
    add = lines.append

    add(f"# {name} {version}")
    add("")
    add(f"{manifest.get('description') or 'Flower SuperNode appliance'}.")
    add("")
    add(f"- Built: {manifest.get('built_at', '-')} on {builder.get('host') or '-'}")
    add(f"- Packer: {builder.get('packer') or '-'}")
    accel = builder.get("accelerator") or {}
    if accel:
        reason = f" ({accel['reason']})" if accel.get("reason") else ""
        add(f"- Build accelerator: {accel.get('name', '-')}{reason}")
    add(f"- Boot firmware of the build VM: {builder.get('firmware', '-')}, machine {builder.get('machine', '-')}")
    add("")

    add("## Download")
    add("")
    add("| file | size | virtual size | sha256 | md5 |")
    add("| --- | --- | --- | --- | --- |")
    add(
        f"| [{image.file_name}]({image.url}) | {_size(artifact.get('file_bytes') or 0)} | "
        f"{_size(image.virtual_bytes)} | `{image.sha256}` | `{image.md5}` |"
    )
    add("")
    add(f"Format: {artifact.get('format') or 'qcow2'}; published as built (not recompressed).")
    add("")

    add("## Contents")
    add("")
    add("| component | version |")
    add("| --- | --- |")
    add(f"| Distribution | {_cell(contents.get('distribution'))} |")
    add(f"| Kernel | {_cell(contents.get('kernel'))} |")
    add(f"| Docker | {_cell(contents.get('docker'))} |")
    add(f"| flwr | {_cell(contents.get('flwr'))} |")
    add(f"| SuperNode container | {_cell(container.get('tag'))} |")
    if variant == "gpu":
        gpu = manifest.get("gpu") or {}
        flavour = gpu.get("kernel_modules")
        modules = f", {_cell(flavour)} kernel modules ({_cell(gpu.get('kernel_module_package'))})" if flavour else ""
        branch = _cell(gpu.get("driver_branch"))
        add(f"| NVIDIA driver | {_cell(gpu.get('driver_version'))} (branch {branch}{modules}) |")
        add(
            f"| NVIDIA Container Toolkit | {_cell(toolkit_version(gpu))} (source: {_cell(gpu.get('toolkit_source'))}) |"
        )
    packages = contents.get("packages") or {}
    driver = nvidia_support.from_manifest(manifest.get("gpu") or {}) if variant == "gpu" else {}
    add(f"| Debian packages | {len(packages)} installed (full list in manifest.json) |")
    held = contents.get("held_packages") or []
    if held:
        add(f"| Held packages | {_cell(', '.join(map(str, held)))} |")
    add("")

    if driver:
        source = {"nvidia-repo": "NVIDIA's repository", "debian": "Debian's package"}.get(
            str(driver.get("driver_source") or ""), "an unrecorded source"
        )
        add(f"**NVIDIA driver support ({driver['support_status']}):** {nvidia_support.describe(driver)}. "
            f"The driver of branch R{driver.get('driver_branch')} comes from {source}.")  # fmt: skip
        add("")

    add("## Build")
    add("")
    add("| stage | duration |")
    add("| --- | --- |")
    for stage, seconds in (manifest.get("stages_s") or {}).items():
        add(f"| {_cell(stage)} | {_seconds(seconds)} |")
    add(f"| **total** | {_seconds(manifest.get('total_s'))} |")
    add("")
    file_bytes = int(artifact.get("file_bytes") or 0)
    if file_bytes and image.virtual_bytes:
        add(
            f"Sizes: {_size(file_bytes)} compressed file, {_size(image.virtual_bytes)} virtual disk "
            f"({100 * file_bytes / image.virtual_bytes:.1f} %)."
        )
        add("")

    add("## Tests")
    add("")
    add(f"In-image tests (`nox -s test_{variant}`) of this very file (sha256 `{tested_sha256}`): {junit.summary()}.")
    add("")
    add("| tests | passed | failures | errors | skipped | time |")
    add("| --- | --- | --- | --- | --- | --- |")
    add(
        f"| {junit.tests} | {junit.passed} | {junit.failures} | {junit.errors} | {junit.skipped} | "
        f"{junit.time_s:.1f} s |"
    )
    add("")
    if verdict.gpu_passthrough_verified is False:
        add(f"**{GPU_UNVERIFIED}**: {verdict.gpu_unverified_reason}. The GPU passthrough checks need a GPU on the "
            "test host; what was tested is the image without a GPU. Run `/opt/flower/scripts/validate-gpu.sh` "
            "in the first VM with a GPU attached.")  # fmt: skip
        add("")
    if junit.scenarios:
        required = REQUIRED_SCENARIOS.get(variant, ())
        add("| scenario | required | tests | passed | failed | errors | skipped |")
        add("| --- | --- | --- | --- | --- | --- | --- |")
        for scenario, s in junit.scenarios.items():
            add(f"| {_cell(scenario)} | {'yes' if scenario in required else 'no'} | {s.tests} | {s.passed} | "
                f"{s.failed} | {s.errors} | {s.skipped} |")  # fmt: skip
        add("")
    skipped = [c for c in junit.not_passed if c.outcome == "skipped"]
    if skipped:
        add("Skipped (not run, so not claimed):")
        add("")
        for case in skipped:
            add(f"- `{case.name}`: {case.message or 'no reason given'}")
        add("")
    if boot_times:
        add("Boot to ready (power-on until the appliance reports ready):")
        add("")
        add("| scenario | time |")
        add("| --- | --- |")
        for scenario, value in boot_times.items():
            add(f"| {_cell(scenario)} | {_seconds(value)} |")
        add("")

    add("## Context variables")
    add("")
    add(markdown_table().rstrip("\n"))
    add("")
    return "\n".join(lines)
