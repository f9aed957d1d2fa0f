"""Command line: ``python3 -m supernode_runtime <command>`` (``flower-appliance`` in the guest).

Commands and exit codes:

* ``boot [--root DIR] [--strict]`` - run the boot sequence. Exit 0 when it ran
  to the end, also when it recorded configuration errors (the VM stays up and
  the SuperNode is simply not started); ``--strict`` exits 2 on errors.
  Exit 1 only on an internal failure (the launch spec is removed first).
* ``run-supernode [--root DIR] [--dry-run]`` - exec ``docker run`` from the
  launch spec (``--dry-run`` prints the argv as JSON). Exit 2 if no valid spec.
* ``status [--root DIR] [--json]`` - show the recorded status. Exit 0 when no
  errors were recorded, 1 when errors were recorded, 3 when there is no status.
* ``check-context PATH [--override PATH] [--root DIR]`` - the boot sequence in
  check mode on a copy of context.sh (``token.txt`` next to it): the same
  reading, validation and decisions, nothing written or contacted. Prints the
  steps on stderr and JSON on stdout (what the boot will do, errors, effective
  configuration with secrets masked, ``depends_on``: what only the live machine
  decides). Exit 0 when the boot would not stop on an error, 2 when it would,
  or when a file cannot be read.
* ``variables --markdown | --user-inputs [--plain-names]`` - generated docs.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from supernode_runtime.bootseq import BootOptions, run_boot
from supernode_runtime.context import context_from_files
from supernode_runtime.fsutil import remove_file
from supernode_runtime.launch import LaunchError, exec_supernode, read_launch_spec
from supernode_runtime.paths import Paths
from supernode_runtime.status import read_status, render_text
from supernode_runtime.variable_docs import markdown_table, user_inputs

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INVALID = 2
EXIT_NO_STATUS = 3


def _cmd_boot(args: argparse.Namespace) -> int:
    paths = Paths.from_root(args.root)
    try:
        result = run_boot(paths)
    except Exception:
        remove_file(paths.launch_spec)
        traceback.print_exc()
        print("ERROR: boot sequence failed internally; SuperNode not started", flush=True)
        return EXIT_INTERNAL
    if args.strict and not result.ok:
        return EXIT_INVALID
    return EXIT_OK


def _cmd_run_supernode(args: argparse.Namespace) -> int:
    paths = Paths.from_root(args.root)
    try:
        if args.dry_run:
            print(json.dumps(read_launch_spec(paths.launch_spec)))
            return EXIT_OK
        exec_supernode(paths.launch_spec)
    except (LaunchError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK  # only reached when exec is replaced (tests)


def _cmd_status(args: argparse.Namespace) -> int:
    doc = read_status(Paths.from_root(args.root))
    if doc is None:
        print("no status recorded: the boot sequence has not run (flower-appliance boot)")
        return EXIT_NO_STATUS
    print(json.dumps(doc, indent=2) if args.json else render_text(doc), end="\n" if args.json else "")
    return EXIT_OK if not doc.get("errors") else 1


def _cmd_check_context(args: argparse.Namespace) -> int:
    """The boot sequence in check mode (bootseq: dry_run): same reading, validation
    and decisions; nothing written, mounted, probed or contacted."""
    path = args.path
    try:
        ctx = context_from_files(Path(path), Path(args.override) if args.override else None)
    except OSError as exc:
        name = exc.filename or path
        print(f"ERROR: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "errors": [{"variable": "", "message": f"cannot read {name}"}]}))
        return EXIT_INVALID
    options = BootOptions(dry_run=True, context=ctx, out=sys.stderr)
    result = run_boot(Paths.from_root(args.root), options)
    report = result.report
    setting = report.config.get("FL_SUPERLINK_ADDRESS", {})
    doc = {
        "ok": result.ok,
        "will_start": result.ok and not result.deferred,
        "depends_on": result.deferred,
        "errors": report.errors,
        "warnings": report.warnings,
        "config": report.config,
        "superlink_discovery": "static" if setting.get("value") else "onegate",
        "steps": [step.line() for step in report.steps],
    }
    print(json.dumps(doc, indent=2))
    return EXIT_OK if result.ok else EXIT_INVALID


def _cmd_variables(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_table(), end="")
    else:
        print(json.dumps(user_inputs(prefixed=not args.plain_names), indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flower-appliance", description="Flower SuperNode appliance runtime")
    sub = parser.add_subparsers(dest="command", required=True)

    boot = sub.add_parser("boot", help="run the boot sequence")
    boot.add_argument("--root", default="/", help="root prefix (tests)")
    boot.add_argument("--strict", action="store_true", help="exit 2 when errors were recorded")
    boot.set_defaults(func=_cmd_boot)

    run = sub.add_parser("run-supernode", help="exec the SuperNode container (systemd)")
    run.add_argument("--root", default="/", help="root prefix (tests)")
    run.add_argument("--dry-run", action="store_true", help="print the argv instead")
    run.set_defaults(func=_cmd_run_supernode)

    status = sub.add_parser("status", help="show the boot status")
    status.add_argument("--root", default="/", help="root prefix (tests)")
    status.add_argument("--json", action="store_true", help="print status.json")
    status.set_defaults(func=_cmd_status)

    check = sub.add_parser("check-context", help="validate a context.sh file")
    check.add_argument("path", help="context.sh file")
    check.add_argument("--override", help="override file applied on top")
    check.add_argument("--root", default="/", help="root prefix whose build.json is used, if any (tests)")
    check.set_defaults(func=_cmd_check_context)

    variables = sub.add_parser("variables", help="print generated variable docs")
    kind = variables.add_mutually_exclusive_group(required=True)
    kind.add_argument("--markdown", action="store_true", help="README table")
    kind.add_argument("--user-inputs", action="store_true", help="USER_INPUTS as JSON")
    variables.add_argument("--plain-names", action="store_true", help="names without ONEAPP_")
    variables.set_defaults(func=_cmd_variables)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
