"""Publish one built and tested image: build/publish/<image>/, written whole or not at all.

    build/publish/<image>/
      <image>.qcow2                 the built file, hard-linked (or copied), never recompressed
      <image>.qcow2.sha256 / .md5   sha256sum / md5sum format
      <image>.marketplace.yaml      OpenNebula marketplace appliance (schema + yamllint checked)
      <image>.tmpl                  OpenNebula VM template (onetemplate create)
      validate-host-gpu.sh          KVM host pre-check for GPU passthrough
      RELEASE_NOTES.md              versions, build stages and sizes, test results
      manifest.json                 the build's manifest, as built
      artifact.json                 file, url, sizes, checksums, tested record
      SHA256SUMS                    every other file of the bundle

Refusals (exit code 2, nothing left in build/publish/<image>):
  - the qcow2's sha256 differs from its .sha256 file or from manifest.json;
  - a GPU image whose manifest says the NVIDIA Container Toolkit is absent;
  - no passing test run recorded for this very file (test-results/tested-image.json): a
    failure or error, or a required scenario of the variant that was skipped or did not run;
  - a GPU image whose GPU passthrough tests did not run, unless allow_unverified_gpu
    (--allow-unverified-gpu); the release notes and marketplace description then say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .. import nvidia_support
from ..artifacts import BuildTree, ImageArtifacts, Manifest, ManifestError
from ..config import NAME_RE
from ..opennebula_templates import GPU_PCI_PLACEHOLDER, SHORT_ADDRESS_RE, render_vm_template
from ..paths import SCRIPTS_DIR
from . import marketplace, release_notes
from .digests import Digests, checksum_line, digests, qcow2_virtual_size, read_checksum_file, sha256_of
from .errors import PublishError, Refused
from .tested import (
    JunitCounts,
    Verdict,
    evaluate,
    junit_of,
    read_boot_times,
    read_junit,
    read_tested_record,
)

URL_PREFIX_RE = re.compile(r"^https?://[^\s]+$")
HOST_CHECK_SCRIPT = SCRIPTS_DIR / "validate-host-gpu.sh"


def _test_command(image_name: str, variant: str, *args: str) -> str:
    """The nox command that tests this image: test_cpu/test_gpu for supernode-cpu/-gpu, the
    generic test_image session for any other definition (supernode-cpu-debian12)."""
    if image_name == f"supernode-{variant}":
        return " ".join([f"nox -s test_{variant}", *(["--", *args] if args else [])])
    return " ".join(["nox -s test_image --", image_name, *args])


def _load_manifest(path: Path, image_name: str) -> Manifest:
    try:
        manifest = Manifest.load(path)
    except ManifestError as exc:
        raise Refused(str(exc)) from None
    if manifest.image != image_name:  # a manifest copied from another image's directory
        raise Refused(f"{path} describes image {manifest.image!r}, not {image_name!r}")
    return manifest


def _check_checksums(qcow2: Path, sha_file: Path, manifest: Manifest, actual: Digests) -> None:
    recorded = read_checksum_file(sha_file)
    if recorded != actual.sha256:
        raise Refused(
            f"checksum mismatch: {qcow2.name} has sha256 {actual.sha256} but {sha_file.name} says {recorded}; "
            "the file changed after the build (rebuild it)"
        )
    in_manifest = manifest.artifact.sha256
    if in_manifest != actual.sha256:
        raise Refused(
            f"checksum mismatch: {qcow2.name} has sha256 {actual.sha256} but manifest.json says "
            f"{in_manifest or '(nothing)'}; the manifest belongs to another build (rebuild it)"
        )


def _check_gpu(manifest: Manifest, image_name: str, *, allow_unsupported_driver: bool = False) -> None:
    # Manifest.load refuses a GPU manifest without its gpu section
    assert manifest.gpu is not None
    driver = nvidia_support.from_manifest(manifest.gpu)  # support as of today, not as of the build
    if driver["support_status"] == "past-support" and not allow_unsupported_driver:
        raise Refused(
            f"{image_name}: {nvidia_support.describe(driver)}. Rebuild with a supported branch from NVIDIA's "
            'repository (gpu.driver_source = "nvidia-repo", nox -s build_gpu without --offline), or publish it '
            "anyway with --allow-unsupported-driver (the release notes and the description say so)"
        )
    toolkit = manifest.gpu.toolkit
    if toolkit.status == "absent":
        because = f" ({toolkit.absent_reason})"
        raise Refused(
            f"{image_name}: manifest.json says the NVIDIA Container Toolkit is absent{because}; without it "
            "containers cannot use the GPU. Rebuild with a toolkit source (nox -s build_gpu, or "
            "-- --toolkit-source mirror:URL | local:DIR)"
        )


def _check_tested(
    image: ImageArtifacts, variant: str, sha256: str, *, allow_unverified_gpu: bool
) -> tuple[JunitCounts, Verdict, dict[str, Any]]:
    tested_path = image.tested_record
    record = read_tested_record(image)
    again = f"run {_test_command(image.name, variant)}"
    if record is None:
        raise Refused(f"tests have not been run for this image: no {tested_path} ({again})")
    if record.get("sha256") != sha256:
        raise Refused(
            f"the tests ran on a different file: {tested_path} records sha256 {record.get('sha256')}, "
            f"the qcow2 now has {sha256} (rebuilt after testing?); {again}"
        )
    junit_ref = str(record.get("junit") or "")
    junit_path = junit_of(image, record)
    if record.get("passed") is not True:
        detail = ""
        if junit_path.is_file():
            with contextlib.suppress(PublishError):  # the refusal stands; the counts are a courtesy
                counts = read_junit(junit_path)
                detail = f" ({counts.summary()})"
                reasons = evaluate(counts, variant).reasons
                if reasons:
                    detail += ": " + "; ".join(reasons)
        raise Refused(f"the tests did not pass for this image{detail}. {tested_path} says passed = false; {again}")
    if not junit_ref:
        raise Refused(f"{tested_path} names no JUnit XML; {again}")
    # judged again from the JUnit XML itself: a record written by an older, laxer rule, or a
    # JUnit file replaced after recording, does not count
    counts = read_junit(junit_path)
    verdict = evaluate(counts, variant)
    if not counts.ok or not verdict.passed:
        raise Refused(
            f"the tests did not pass for this image: {junit_path} now reports {counts.summary()}: "
            f"{'; '.join(verdict.reasons)}; {again}"
        )
    if verdict.gpu_passthrough_verified is False and not allow_unverified_gpu:
        vfio = _test_command(image.name, variant, "--vfio <PCI address>")
        raise Refused(
            f"GPU passthrough not verified for this build ({verdict.gpu_unverified_reason}). Test it on a host "
            f"with a vfio-bound GPU ({vfio}), or publish it as "
            "unverified with --allow-unverified-gpu (the release notes and the marketplace description then say so)"
        )
    return counts, verdict, record


def _place_image(source: Path, target: Path) -> None:
    """Hard link when build/ and build/publish/ share a filesystem, else a byte copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_bundle(
    partial: Path,
    image: ImageArtifacts,
    variant: str,
    manifest: Manifest,
    actual: Digests,
    virtual_bytes: int,
    junit: JunitCounts,
    verdict: Verdict,
    tested: dict[str, Any],
    *,
    url_prefix: str,
    gpu_pci_address: str,
    version: str | None,
    publisher: str,
    opennebula_version: str,
) -> None:
    """Everything next to the (already placed and verified) qcow2 in the partial bundle."""
    image_name = image.name
    file_name = image.qcow2.name
    facts = marketplace.ImageFacts(
        file_name=file_name,
        url=f"{url_prefix.rstrip('/')}/{file_name}",
        virtual_bytes=virtual_bytes,
        sha256=actual.sha256,
        md5=actual.md5,
    )
    document = marketplace.appliance_document(
        manifest,
        facts,
        version=version,
        publisher=publisher,
        opennebula_version=opennebula_version,
        gpu_passthrough_verified=verdict.gpu_passthrough_verified is not False,
    )
    appliance_yaml = marketplace.dump(document)
    problems = marketplace.check_text(appliance_yaml)
    if problems:
        raise PublishError("the generated marketplace YAML is invalid:\n  " + "\n  ".join(problems))
    boot_times = read_boot_times(image)
    notes = release_notes.render(
        manifest,
        facts,
        version=str(document["version"]),
        junit=junit,
        verdict=verdict,
        boot_times=boot_times,
        tested_sha256=str(tested["sha256"]),
    )
    artifact = {
        "image": image_name,
        "variant": variant,
        "version": document["version"],
        "file": file_name,
        "url": facts.url,
        "file_bytes": actual.file_bytes,
        "virtual_bytes": virtual_bytes,
        "sha256": actual.sha256,
        "md5": actual.md5,
        "tested": {**tested, "summary": junit.summary(), "gpu_passthrough_verified": verdict.gpu_passthrough_verified},
    }
    files = {
        f"{file_name}.sha256": checksum_line(actual.sha256, file_name),
        f"{file_name}.md5": checksum_line(actual.md5, file_name),
        f"{image_name}.marketplace.yaml": appliance_yaml,
        f"{image_name}.tmpl": render_vm_template(variant, image_name, pci_short_address=gpu_pci_address),
        "RELEASE_NOTES.md": notes,
        image.manifest.name: image.manifest.read_text(),  # as built, byte for byte
        "artifact.json": json.dumps(artifact, indent=2) + "\n",
    }
    for name, text in files.items():
        (partial / name).write_text(text)
    script = partial / HOST_CHECK_SCRIPT.name
    shutil.copyfile(HOST_CHECK_SCRIPT, script)
    script.chmod(0o755)
    sums = "".join(
        checksum_line(actual.sha256 if p.name == file_name else sha256_of(p), p.name) for p in sorted(partial.iterdir())
    )
    (partial / "SHA256SUMS").write_text(sums)


def publish(
    image_name: str,
    url_prefix: str,
    tree: BuildTree,
    *,
    gpu_pci_address: str = GPU_PCI_PLACEHOLDER,
    version: str | None = None,
    publisher: str = marketplace.DEFAULT_PUBLISHER,
    opennebula_version: str = marketplace.OPENNEBULA_VERSIONS,
    allow_unverified_gpu: bool = False,
    allow_unsupported_driver: bool = False,
) -> Path:
    """Write the bundle of `image_name` (build/publish/<image>/) from its build directory; return its path.

    allow_unverified_gpu: publish a GPU image whose passthrough tests did not run (no GPU on
    the test host), saying so in its release notes and marketplace description.
    allow_unsupported_driver: publish a GPU image whose driver branch NVIDIA no longer supports
    (appliance_build/nvidia_branches.toml), saying so likewise."""
    if not NAME_RE.match(image_name):
        raise PublishError(f"image name {image_name!r}: use lower-case letters, digits and '-'")
    if not URL_PREFIX_RE.match(url_prefix):
        raise PublishError(
            f"--url-prefix {url_prefix!r}: expected an http(s) URL (the directory the qcow2 is served from)"
        )
    if gpu_pci_address != GPU_PCI_PLACEHOLDER and not SHORT_ADDRESS_RE.match(gpu_pci_address):
        raise PublishError(f"--gpu-pci-address {gpu_pci_address!r}: expected bus:device.function such as e1:00.0")
    image = tree.image(image_name)
    publish_root = tree.publish
    final = tree.bundle(image_name)
    # An earlier bundle goes first: a refusal leaves nothing that could pass for this build.
    _remove(final)
    for stale in publish_root.glob(f".{image_name}.partial-*"):
        _remove(stale)

    qcow2, sha_file = image.qcow2, image.sha256
    for needed in image.results:
        if not needed.is_file():
            raise Refused(f"{needed} does not exist: build the image first ({image.build_command})")
    manifest = _load_manifest(image.manifest, image_name)
    variant = manifest.variant
    if variant == "gpu":
        _check_gpu(manifest, image_name, allow_unsupported_driver=allow_unsupported_driver)

    publish_root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{image_name}.partial-", dir=publish_root))
    try:
        # The checks read the bundled file itself: what is verified is what is published.
        bundled = partial / qcow2.name
        _place_image(qcow2, bundled)
        actual = digests(bundled)
        _check_checksums(qcow2, sha_file, manifest, actual)
        virtual_bytes = qcow2_virtual_size(bundled)
        junit, verdict, tested = _check_tested(image, variant, actual.sha256, allow_unverified_gpu=allow_unverified_gpu)
        _write_bundle(
            partial,
            image,
            variant,
            manifest,
            actual,
            virtual_bytes,
            junit,
            verdict,
            tested,
            url_prefix=url_prefix,
            gpu_pci_address=gpu_pci_address,
            version=version,
            publisher=publisher,
            opennebula_version=opennebula_version,
        )
        partial.chmod(0o755)
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final
