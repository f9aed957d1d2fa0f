"""End-to-end run of the SuperNode appliance with a real SuperLink and `flwr run`.

    python -m e2e.runner [--image supernode-cpu] [--faults] [--rounds 3] [--nodes vm|local]

1. creates a CA and a SuperLink certificate (SAN 10.0.2.2, 127.0.0.1) in build/e2e/tls/;
2. starts flower-superlink on 127.0.0.1:<free port> with TLS;
3. boots two appliance VMs from build/<image>/<image>.qcow2, each with a CONTEXT
   (ONEAPP_FL_SUPERLINK_ADDRESS=10.0.2.2:<port>, TLS on with the CA, its own
   partition in ONEAPP_FL_NODE_CONFIG);
4. waits (bounded) until both SuperNodes are online, submits e2e/app with
   `flwr run` and waits (bounded) for it to finish; passes only if every round
   ran with both nodes and the loss went down;
5. keeps the SuperLink log, each VM's serial console, journal and status, and
   writes build/e2e/summary.json and summary.md.

With --faults, three more scenarios: the SuperLink restarts between two runs,
the SuperLink starts only after the nodes are up, one node has a bad TLS
configuration. ``--nodes local`` runs the same scenarios with flower-supernode
processes on this host instead of VMs (fast; no image needed).

Exit status: 0 all scenarios passed, 1 a scenario failed, 2 bad usage or
missing image, 130 interrupted. Every process started here (SuperLink,
flwr run, QEMU, local SuperNodes) is stopped by its own pid, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from appliance_build.artifacts import BuildTree, ImageArtifacts, Manifest
from appliance_build.errors import BuildError
from appliance_build.progress import interrupt_on_sigterm, say

from . import summary as sm
from . import tls
from .nodes import TLS_EMPTY_CA, TLS_WRONG_CA
from .scenarios import Options, Scenarios

BASELINE, RESTART, LATE, BAD_TLS = "baseline", "superlink-restart", "superlink-late", "bad-tls"
SCENARIOS = (BASELINE, RESTART, LATE, BAD_TLS)

# VM sizing and timeouts for this build host: 2 cores, no KVM (TCG), the SuperLink and the ServerApp
# on the host too. TCG runs one host thread per vCPU, so two guests with 1 vCPU each already use both
# cores; 2 vCPUs per guest measured no better (the pile-up was the same with 1 or 2). 1536 MiB holds
# Docker, flower-supernode, flower-superexec, the warm launcher (~121 MiB) and its ~7 MiB children.
VM_CPUS = 1
VM_MEMORY_MIB = 1536
# Measured under TCG (1 vCPU, 1536 MiB, two guests side by side): SSH login 120-190 s, SuperNode
# container running 165-315 s after QEMU starts. Also bounds the wait for the warm launcher's imports
# (1135 modules, 0.45-2 s natively) before each run.
READY_TIMEOUT_S = 900.0
# Measured: both nodes registered 240-510 s after QEMU start, i.e. up to ~200 s after the later
# container ran, before the launcher shared the vCPU with flower-supernode's start-up; twice that plus
# the launcher's import under TCG. Also the ServerApp's wait for its nodes.
CONNECT_TIMEOUT_S = 600.0
# One round phase (train or evaluate) at the ServerApp (flwr's send_and_receive timeout). Measured
# natively with the warm launcher: a task's forked child uses about 0.08 s of CPU (0.25 s for a node's
# first three tasks), its shim one `python -I -S` start; flwr's imports ran 58-142x slower under TCG
# than natively (75-185 s vs 1.3 s), so a phase should take about a minute there and the first one
# (the first fork's copy-on-write faults, the app's first import in the child) a few minutes at worst.
ROUND_TIMEOUT_S = 600.0
# One `flwr run`: above the connect wait plus a stuck first phase (600 + 600 s), so the ServerApp's own
# RoundIncomplete / NotEnoughNodes message normally ends a bad run before the runner stops it.
RUN_TIMEOUT_S = 2400.0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.runner",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--image", default="supernode-cpu", help="image name under build/ (default supernode-cpu)")
    parser.add_argument("--faults", action="store_true", help="also run the fault scenarios")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        default=None,
        help="run only this scenario (repeatable; superlink-restart implies baseline); "
        "default: baseline, and with --faults all four",
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="FL rounds per run (default 3; at least 2)")
    parser.add_argument(
        "--nodes",
        choices=("vm", "local"),
        default="vm",
        help="SuperNodes as appliance VMs (default) or local flower-supernode processes",
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory (default build/e2e)")
    parser.add_argument(
        "--vm-memory", type=positive_int, default=VM_MEMORY_MIB, help=f"MiB per VM (default {VM_MEMORY_MIB})"
    )
    parser.add_argument("--vm-cpus", type=positive_int, default=VM_CPUS, help=f"vCPUs per VM (default {VM_CPUS})")
    parser.add_argument(
        "--ready-timeout",
        type=positive_float,
        default=READY_TIMEOUT_S,
        help="seconds for a VM to boot until its SuperNode container runs, and for the warm "
        f"ClientApp launchers to be ready before a run (default {READY_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=CONNECT_TIMEOUT_S,
        help=f"seconds for the SuperNodes to show up at the SuperLink (default {CONNECT_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--run-timeout",
        type=positive_float,
        default=RUN_TIMEOUT_S,
        help=f"seconds for one `flwr run` to finish (default {RUN_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--round-timeout",
        type=positive_float,
        default=ROUND_TIMEOUT_S,
        help="seconds the ServerApp waits for the replies of one round phase; fewer replies than "
        f"needed stop the run (default {ROUND_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--bad-tls",
        choices=(TLS_EMPTY_CA, TLS_WRONG_CA),
        default=TLS_EMPTY_CA,
        help="the bad-tls fault: TLS on with an empty CA (default) or with an unrelated CA",
    )
    parser.add_argument(
        "--connect-only",
        action="store_true",
        help="no `flwr run`: check only that the nodes connect (TLS), reconnect, join late and that "
        "a bad TLS node stays out (for guests too slow to start a ClientApp in flwr's 30 s window)",
    )
    parser.add_argument(
        "--no-superlink-db",
        action="store_true",
        help="run the SuperLink with in-memory state (a restart then forgets the nodes)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 to see the loss go down")
    return args


def selected_scenarios(args: argparse.Namespace) -> list[str]:
    """The scenarios to run, in the order they run."""
    if args.scenario:
        wanted = set(args.scenario)
        if RESTART in wanted:
            wanted.add(BASELINE)
    else:
        wanted = set(SCENARIOS) if args.faults else {BASELINE}
    return [name for name in SCENARIOS if name in wanted]


def image_paths(image: str) -> tuple[Path, str, str]:
    """The image file and its firmware and machine from its manifest."""
    out = ImageArtifacts.for_image(image)
    if not out.qcow2.is_file():
        raise BuildError(f"{out.qcow2} does not exist: build it first ({out.build_command})")
    builder = Manifest.load(out.manifest).builder
    return out.qcow2, builder.firmware, builder.machine


def prepare_out(out: Path) -> None:
    """A fresh output directory; the previous run's moves to <out>.previous."""
    if out.exists():
        previous = out.with_name(out.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        out.rename(previous)
    out.mkdir(parents=True)


def main(argv: Sequence[str] | None = None) -> int:
    interrupt_on_sigterm()
    args = parse_args(argv)
    out = (args.out or BuildTree.default().e2e).resolve()
    image_file: Path | None = None
    firmware: str | None = None
    machine: str | None = None
    if args.nodes == "vm":
        try:
            image_file, firmware, machine = image_paths(args.image)
        except BuildError as exc:
            print(f"e2e: {exc}", file=sys.stderr)
            return 2
    # paramiko logs every refused SSH attempt of a booting VM with a traceback; the wait loops handle them
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    prepare_out(out)
    faults = any(name != BASELINE for name in selected_scenarios(args))
    options = Options(
        out=out,
        image=args.image,
        image_file=image_file,
        firmware=firmware,
        machine=machine,
        nodes=args.nodes,
        rounds=args.rounds,
        faults=faults,
        memory=args.vm_memory,
        cpus=args.vm_cpus,
        ready_timeout=args.ready_timeout,
        connect_timeout=args.connect_timeout,
        run_timeout=args.run_timeout,
        round_timeout=args.round_timeout,
        bad_tls=args.bad_tls,
        superlink_db=not args.no_superlink_db,
        connect_only=args.connect_only,
    )
    summary = sm.Summary(
        image=args.image if args.nodes == "vm" else "(local SuperNodes)",
        nodes_mode=args.nodes,
        rounds=args.rounds,
        faults=faults,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
    )
    started = time.monotonic()
    material = tls.create(out / "tls")
    wrong_ca = tls.create_unrelated_ca(out / "tls" / "unrelated-ca.pem")
    say(f"e2e: TLS material in {out / 'tls'}; output in {out}")
    scenarios = Scenarios(options, material, wrong_ca)
    interrupted = False
    try:
        summary.scenarios = scenarios.reports  # filled as the scenarios start, so an interrupted one is listed too
        wanted = selected_scenarios(args)
        if BASELINE in wanted:
            scenarios.baseline(with_restart=RESTART in wanted)
            sm.write(summary, out)
        if LATE in wanted:
            scenarios.superlink_late()
            sm.write(summary, out)
        if BAD_TLS in wanted:
            scenarios.bad_tls()
    except KeyboardInterrupt:
        interrupted = True
        say("e2e: interrupted; everything started was stopped")
    finally:
        summary.finish(time.monotonic() - started)
        if interrupted:
            summary.ok = False
        _, md_path = sm.write(summary, out)
        say(f"e2e: {'PASSED' if summary.ok else 'FAILED'} in {summary.total_s:.0f} s; {md_path}")
    if interrupted:
        return 130
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
