"""Command line of the pipeline; the nox sessions call this.

python -m appliance_build build IMAGE [--packer-target VERSION]
python -m appliance_build render IMAGE... [--packer-target VERSION]
python -m appliance_build show IMAGE
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from . import config
from .errors import BuildError
from .opennebula_templates import render_vm_template
from .paths import build_root
from .progress import interrupt_on_sigterm
from .stages import base as base_stage
from .stages import packer, render
from .vm import accel as accel_probe
from .vm.firmware import find_uefi


def _image_names(names: list[str]) -> list[str]:
    known = config.available()
    for name in names:
        if name not in known:
            raise BuildError(f"unknown image {name!r}; known images: {', '.join(known)}")
    return names or known


def cmd_render(args: argparse.Namespace) -> int:
    target = render.PackerTarget.parse(args.packer_target) if args.packer_target else render.detect_packer()
    for name in _image_names(args.images):
        image = config.load(name)
        base_disk = base_stage.cache_entry(image.base)[1] / "disk.qcow2"
        accel = accel_probe.Accelerator("tcg", "max", "render only: the build probes")
        out = build_root() / name
        firmware = find_uefi() if image.disk.firmware == "uefi" else None
        with packer.build_keypair(name) as key_pair:
            rendered = render.render(
                image, out, target=target, accel=accel, base_disk=base_disk, base_checksum="none",
                upload_dir=out / "flower-build", ssh_public_key=key_pair.public, firmware=firmware,
            )  # fmt: skip
        vm_template = out / "opennebula" / f"{name}.tmpl"
        vm_template.parent.mkdir(parents=True, exist_ok=True)
        vm_template.write_text(render_vm_template(image.variant, name))
        print(
            f"{name}: {target.label}\n  {rendered.hcl}\n  {rendered.user_data}\n  {rendered.meta_data}\n  {vm_template}"
        )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build_image

    build_image(args.image, packer_target=args.packer_target, toolkit_source=args.toolkit_source,
                allow_missing_toolkit=args.allow_missing_toolkit, offline=args.offline)  # fmt: skip
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    image = config.load(args.image)
    print(json.dumps(asdict(image), indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    interrupt_on_sigterm()
    parser = argparse.ArgumentParser(prog="appliance_build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build one image into build/IMAGE/")
    p.add_argument("image")
    p.add_argument("--packer-target", help="render for this Packer version instead of the installed one")
    p.add_argument("--toolkit-source", help="GPU image: nvidia-repo, mirror:URL or local:/dir/of/debs")
    p.add_argument("--allow-missing-toolkit", action="store_true",
                   help="GPU image: build without the NVIDIA Container Toolkit if no source is reachable "
                        "(recorded as absent; publishing refuses the image)")  # fmt: skip
    p.add_argument("--offline", action="store_true",
                   help="GPU image: no NVIDIA repository: the driver from Debian, the toolkit from "
                        "--toolkit-source local:DIR or absent (recorded; publishing refuses the image)")  # fmt: skip
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("render", help="only render Packer HCL and cloud-init into build/IMAGE/")
    p.add_argument("images", nargs="*")
    p.add_argument("--packer-target", help="e.g. 1.6.6 or 1.11.2 (default: the installed packer)")
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("show", help="print the merged, validated definition")
    p.add_argument("image")
    p.set_defaults(func=cmd_show)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the previous image (if any) is unchanged, logs kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
