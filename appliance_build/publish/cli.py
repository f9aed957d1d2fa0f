"""Command line of the publishing step; the nox sessions `publish` and `check_marketplace` call it.

python -m appliance_build.publish publish IMAGE --url-prefix URL [--gpu-pci-address e1:00.0] [--allow-unverified-gpu]
python -m appliance_build.publish check FILE...
python -m appliance_build.publish record-tested IMAGE [--junit PATH]
python -m appliance_build.publish vm-template cpu|gpu IMAGE [--gpu-pci-address e1:00.0]

Exit codes: 0 done / valid; 2 refused, invalid or an error (the reason is printed);
record-tested: 1 when the recorded run did not pass (a failure or error, or a required
scenario skipped or missing); 130 interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..artifacts import BuildTree
from ..opennebula_templates import GPU_PCI_PLACEHOLDER, render_vm_template
from ..progress import run_main
from . import marketplace
from .bundle import publish
from .tested import read_junit, record_tested_image


def _tree(args: argparse.Namespace) -> BuildTree:
    return BuildTree(Path(args.build_root)) if args.build_root else BuildTree.default()


def cmd_publish(args: argparse.Namespace) -> int:
    final = publish(
        args.image,
        args.url_prefix,
        _tree(args),
        gpu_pci_address=args.gpu_pci_address,
        version=args.version,
        publisher=args.publisher,
        opennebula_version=args.opennebula_version,
        allow_unverified_gpu=args.allow_unverified_gpu,
        allow_unsupported_driver=args.allow_unsupported_driver,
    )
    print(f"published {args.image}: {final}")
    for path in sorted(final.iterdir()):
        print(f"  {path.name}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    status = 0
    for name in args.files:
        problems = marketplace.check_file(Path(name))
        if problems:
            status = 2
            for problem in problems:
                print(f"{name}: {problem}", file=sys.stderr)
        else:
            print(f"{name}: ok")
    return status


def cmd_record_tested(args: argparse.Namespace) -> int:
    image = _tree(args).image(args.image)
    junit = Path(args.junit) if args.junit else image.junit
    record = record_tested_image(image, junit)
    verdict = "passed" if record["passed"] else "NOT passed"
    print(f"{args.image}: {read_junit(junit).summary()}; {verdict} for sha256 {record['sha256']}")
    for reason in record["reasons"]:
        print(f"  not passed: {reason}")
    if record.get("gpu_passthrough_verified") is False:
        print("  GPU passthrough not verified (publishing needs --allow-unverified-gpu)")
    return 0 if record["passed"] else 1


def cmd_vm_template(args: argparse.Namespace) -> int:
    sys.stdout.write(render_vm_template(args.variant, args.image, pci_short_address=args.gpu_pci_address))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance_build.publish",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("publish", help="write build/publish/IMAGE/ for a built and tested image")
    p.add_argument("image", help="e.g. supernode-cpu")
    p.add_argument("--url-prefix", required=True, help="http(s) URL of the directory the qcow2 will be served from")
    p.add_argument(
        "--gpu-pci-address",
        default=GPU_PCI_PLACEHOLDER,
        help="GPU image: PCI SHORT_ADDRESS for the VM template, e.g. e1:00.0 (default: a placeholder)",
    )
    p.add_argument("--version", help="marketplace version (default: <flwr version>-<build date>)")
    p.add_argument("--publisher", default=marketplace.DEFAULT_PUBLISHER)
    p.add_argument(
        "--opennebula-version",
        default=marketplace.OPENNEBULA_VERSIONS,
        help=f"OpenNebula versions the appliance supports (default: {marketplace.OPENNEBULA_VERSIONS})",
    )
    p.add_argument(
        "--allow-unverified-gpu",
        action="store_true",
        help="GPU image: publish although its GPU passthrough tests did not run (no GPU on the test host); "
        "the release notes and the marketplace description say so",
    )
    p.add_argument(
        "--allow-unsupported-driver",
        action="store_true",
        help="GPU image: publish although NVIDIA no longer supports its driver branch "
        "(appliance_build/nvidia_branches.toml); the release notes and the description say so",
    )
    p.add_argument("--build-root", help="default: build/ (or $FLOWER_BUILD_DIR)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("check", help="validate marketplace appliance YAML files (yamllint + schema)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("record-tested", help="record which qcow2 the in-image tests ran on, and whether they passed")
    p.add_argument("image")
    p.add_argument("--junit", help="default: build/IMAGE/test-results/junit.xml")
    p.add_argument("--build-root", help="default: build/ (or $FLOWER_BUILD_DIR)")
    p.set_defaults(func=cmd_record_tested)

    p = sub.add_parser("vm-template", help="print the OpenNebula VM template of a variant")
    p.add_argument("variant", choices=["cpu", "gpu"])
    p.add_argument("image", help="name of the image in the OpenNebula datastore")
    p.add_argument("--gpu-pci-address", default=GPU_PCI_PLACEHOLDER)
    p.set_defaults(func=cmd_vm_template)

    args = parser.parse_args(argv)
    # a cancelled job's SIGTERM leaves no partial bundle, as Ctrl-C does
    return run_main(lambda: int(args.func(args)), interrupted="no partial bundle left")
