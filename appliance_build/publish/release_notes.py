"""Release notes (Markdown) of one published image, generated from its manifest and test results."""

from __future__ import annotations

from typing import Any

from supernode_runtime.variable_docs import markdown_table

from .. import nvidia_support
from ..artifacts import Manifest
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
    manifest: Manifest,
    image: ImageFacts,
    *,
    version: str,
    junit: JunitCounts,
    verdict: Verdict,
    boot_times: dict[str, Any],
    tested_sha256: str,
) -> str:
    name = manifest.image
    variant = manifest.variant
    contents = manifest.contents
    builder = manifest.builder
    artifact = manifest.artifact
    lines: list[str] = []
    add = lines.append

    add(f"# {name} {version}")
    add("")
    add(f"{manifest.description}.")
    add("")
    add(f"- Built: {manifest.built_at} on {builder.host or '-'}")
    add(f"- Packer: {builder.packer}")
    accel = builder.accelerator
    reason = f" ({accel.reason})" if accel.reason else ""
    add(f"- Build accelerator: {accel.name}{reason}")
    add(f"- Boot firmware of the build VM: {builder.firmware}, machine {builder.machine}")
    add("")

    add("## Download")
    add("")
    add("| file | size | virtual size | sha256 | md5 |")
    add("| --- | --- | --- | --- | --- |")
    add(
        f"| [{image.file_name}]({image.url}) | {_size(artifact.file_bytes)} | "
        f"{_size(image.virtual_bytes)} | `{image.sha256}` | `{image.md5}` |"
    )
    add("")
    add(f"Format: {artifact.format}; published as built (not recompressed).")
    add("")

    add("## Contents")
    add("")
    add("| component | version |")
    add("| --- | --- |")
    add(f"| Distribution | {_cell(contents.distribution)} |")
    add(f"| Kernel | {_cell(contents.kernel)} |")
    add(f"| Docker | {_cell(contents.docker)} |")
    add(f"| flwr | {_cell(contents.flwr)} |")
    add(f"| SuperNode container | {_cell(manifest.container.tag)} |")
    gpu = manifest.gpu
    if gpu is not None:
        modules = f", {_cell(gpu.kernel_modules)} kernel modules ({_cell(gpu.kernel_module_package)})"
        add(f"| NVIDIA driver | {_cell(gpu.driver_version)} (branch {_cell(gpu.driver_branch)}{modules}) |")
        add(
            f"| NVIDIA Container Toolkit | {_cell(toolkit_version(gpu.toolkit))} "
            f"(source: {_cell(gpu.toolkit.source)}) |"
        )
    add(f"| Debian packages | {len(contents.packages)} installed (full list in manifest.json) |")
    if contents.held_packages:
        add(f"| Held packages | {_cell(', '.join(contents.held_packages))} |")
    add("")

    if gpu is not None:
        driver = nvidia_support.from_manifest(gpu)
        source = {"nvidia-repo": "NVIDIA's repository", "debian": "Debian's package"}[gpu.driver_source]
        add(
            f"**NVIDIA driver support ({driver['support_status']}):** {nvidia_support.describe(driver)}. "
            f"The driver of branch R{gpu.driver_branch} comes from {source}."
        )
        add("")

    add("## Build")
    add("")
    add("| stage | duration |")
    add("| --- | --- |")
    for stage, seconds in manifest.stages_s.items():
        add(f"| {_cell(stage)} | {_seconds(seconds)} |")
    add(f"| **total** | {_seconds(manifest.total_s)} |")
    add("")
    file_bytes = artifact.file_bytes
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
        add(
            f"**{GPU_UNVERIFIED}**: {verdict.gpu_unverified_reason}. The GPU passthrough checks need a GPU on the "
            "test host; what was tested is the image without a GPU. Run `/opt/flower/scripts/validate-gpu.sh` "
            "in the first VM with a GPU attached."
        )
        add("")
    if junit.scenarios:
        required = REQUIRED_SCENARIOS.get(variant, ())
        add("| scenario | required | tests | passed | failed | errors | skipped |")
        add("| --- | --- | --- | --- | --- | --- | --- |")
        for scenario, s in junit.scenarios.items():
            add(
                f"| {_cell(scenario)} | {'yes' if scenario in required else 'no'} | {s.tests} | {s.passed} | "
                f"{s.failed} | {s.errors} | {s.skipped} |"
            )
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
