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

from . import config, plan
from .artifacts import ImageArtifacts
from .errors import BuildError
from .progress import run_main
from .stages import packer


def _image_names(names: list[str]) -> list[str]:
    known = config.available()
    for name in names:
        if name not in known:
            raise BuildError(f"unknown image {name!r}; known images: {', '.join(known)}")
    return names or known


def cmd_render(args: argparse.Namespace) -> int:
    """The build's own front half (plan.check, plan.runs, plan.write) without the build."""
    for name in _image_names(args.images):
        gpu = config.load(name).gpu is not None  # GPU options apply to the GPU images of the list
        request = plan.check(
            name,
            packer_target=args.packer_target,
            toolkit_source=args.toolkit_source if gpu else None,
            allow_missing_toolkit=args.allow_missing_toolkit and gpu,
            offline=args.offline and gpu,
            stages=("packer",),
        )
        out = ImageArtifacts.for_image(name)
        with packer.build_keypair(name) as key_pair:
            written = plan.write(request, plan.runs(request, out), out, key_pair.public)
        print(f"{name}: {request.target.label}" + "".join(f"\n  {path}" for path in written))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build_image

    build_image(
        args.image,
        packer_target=args.packer_target,
        toolkit_source=args.toolkit_source,
        allow_missing_toolkit=args.allow_missing_toolkit,
        offline=args.offline,
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    image = config.load(args.image)
    print(json.dumps(asdict(image), indent=2, default=str))
    return 0


def _request_options(p: argparse.ArgumentParser) -> None:
    """The options of plan.check(): `build` and `render` take the same ones."""
    p.add_argument("--packer-target", help="render for this Packer version (e.g. 1.6.6, 1.11.2), not the installed one")
    p.add_argument("--toolkit-source", help="GPU image: nvidia-repo, mirror:URL or local:/dir/of/debs")
    p.add_argument(
        "--allow-missing-toolkit",
        action="store_true",
        help="GPU image: build without the NVIDIA Container Toolkit if no source is reachable "
        "(recorded as absent; publishing refuses the image)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="GPU image: no NVIDIA repository: the driver from Debian, the toolkit from "
        "--toolkit-source local:DIR or absent (recorded; publishing refuses the image)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="appliance_build", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build one image into build/IMAGE/")
    p.add_argument("image")
    _request_options(p)
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("render", help="only render what a build with the same options would run, into build/IMAGE/")
    p.add_argument("images", nargs="*")
    _request_options(p)
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("show", help="print the merged, validated definition")
    p.add_argument("image")
    p.set_defaults(func=cmd_show)
    args = parser.parse_args(argv)
    return run_main(lambda: int(args.func(args)), interrupted="the previous image (if any) is unchanged, logs kept")


if __name__ == "__main__":
    sys.exit(main())
