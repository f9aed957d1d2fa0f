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
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from appliance_build.errors import BuildError
from appliance_build.paths import build_root
from appliance_build.progress import interrupt_on_sigterm, say

from . import summary as sm
from . import tls
from .nodes import TLS_EMPTY_CA, TLS_WRONG_CA
from .scenarios import Options, Scenarios

BASELINE, RESTART, LATE, BAD_TLS = "baseline", "superlink-restart", "superlink-late", "bad-tls"
SCENARIOS = (BASELINE, RESTART, LATE, BAD_TLS)


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
    parser = argparse.ArgumentParser(prog="python -m e2e.runner", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--image", default="supernode-cpu", help="image name under build/ (default supernode-cpu)")
    parser.add_argument("--faults", action="store_true", help="also run the fault scenarios")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, default=None,
                        help="run only this scenario (repeatable; superlink-restart implies baseline); "
                        "default: baseline, and with --faults all four")
    parser.add_argument("--rounds", type=positive_int, default=3, help="FL rounds per run (default 3; at least 2)")
    parser.add_argument("--nodes", choices=("vm", "local"), default="vm",
                        help="SuperNodes as appliance VMs (default) or local flower-supernode processes")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default build/e2e)")
    parser.add_argument("--vm-memory", type=positive_int, default=1536, help="MiB per VM (default 1536)")
    parser.add_argument("--vm-cpus", type=positive_int, default=1, help="vCPUs per VM (default 1)")
    parser.add_argument("--ready-timeout", type=positive_float, default=900.0,
                        help="seconds for a VM to boot until its SuperNode container runs (default 900)")
    parser.add_argument("--connect-timeout", type=positive_float, default=300.0,
                        help="seconds for the SuperNodes to show up at the SuperLink (default 300)")
    parser.add_argument("--run-timeout", type=positive_float, default=2400.0,
                        help="seconds for one `flwr run` to finish (default 2400)")
    parser.add_argument("--round-timeout", type=positive_float, default=600.0,
                        help="seconds the ServerApp waits for the replies of one round phase; fewer replies than "
                        "needed stop the run (default 600)")
    parser.add_argument("--bad-tls", choices=(TLS_EMPTY_CA, TLS_WRONG_CA), default=TLS_EMPTY_CA,
                        help="the bad-tls fault: TLS on with an empty CA (default) or with an unrelated CA")
    parser.add_argument("--connect-only", action="store_true",
                        help="no `flwr run`: check only that the nodes connect (TLS), reconnect, join late and that "
                        "a bad TLS node stays out (for guests too slow to start a ClientApp in flwr's 30 s window)")
    parser.add_argument("--no-superlink-db", action="store_true",
                        help="run the SuperLink with in-memory state (a restart then forgets the nodes)")
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
    """The image file and its firmware and machine from build/<image>/manifest.json."""
    directory = build_root() / image
    qcow2, manifest_file = directory / f"{image}.qcow2", directory / "manifest.json"
    if not qcow2.is_file() or not manifest_file.is_file():
        raise BuildError(f"{qcow2} or its manifest.json does not exist: build it first "
                         f"(nox -s build_{image.split('-')[-1]})")  # fmt: skip
    builder = json.loads(manifest_file.read_text()).get("builder") or {}
    return qcow2, str(builder.get("firmware") or "bios"), str(builder.get("machine") or "q35")


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
    out = (args.out or build_root() / "e2e").resolve()
    image_file, firmware, machine = None, "bios", "q35"
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
        out=out, image=args.image, image_file=image_file, firmware=firmware, machine=machine, nodes=args.nodes,
        rounds=args.rounds, faults=faults, memory=args.vm_memory, cpus=args.vm_cpus,
        ready_timeout=args.ready_timeout, connect_timeout=args.connect_timeout, run_timeout=args.run_timeout,
        round_timeout=args.round_timeout, bad_tls=args.bad_tls, superlink_db=not args.no_superlink_db,
        connect_only=args.connect_only,
    )  # fmt: skip
    summary = sm.Summary(
        image=args.image if args.nodes == "vm" else "(local SuperNodes)", nodes_mode=args.nodes, rounds=args.rounds,
        faults=faults, started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
    )  # fmt: skip
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
