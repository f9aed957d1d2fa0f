"""The SuperNodes of a scenario: appliance VMs (the real thing) or local processes.

:class:`VmNodes` boots one appliance VM per :class:`NodeSpec` from the built
image, each with an OpenNebula CONTEXT CD that points it at the run's SuperLink
(10.0.2.2:<port> from inside QEMU user networking), turns TLS on with the run's
CA and gives it its own partition. All VMs are started before any is waited
for, so they boot side by side; each is an
:func:`appliance_build.vm.appliance.start` context manager (QEMU in its own
process group, stopped by its pid) inside one ExitStack.

:class:`LocalNodes` runs ``flower-supernode`` processes on this host instead
(``--nodes local``): the same scenarios without VMs, to check the app, the TLS
material and the runner quickly. Its command line and environment come from the
appliance's own validation and launch builders (supernode_runtime.config.resolve,
supernode_runtime.launch.supernode_args and container_env, the pieces of its ``docker run``
argv) fed the same CONTEXT as a VM; with ``entrypoint=True``
(the e2e runner) the SuperNode runs under ``python -m supernode_container.entrypoint``
as in the container, so ClientApps go through the warm launcher.

Both read each node's ClientApp launch log (:mod:`e2e.launches`): a VM's from its
SuperNode container over SSH, a local node's from its work directory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from appliance_build.progress import kill_group, say
from appliance_build.vm import accel as accel_probe
from appliance_build.vm import appliance
from appliance_build.vm.accel import Accelerator
from appliance_build.vm.launcher import free_port
from supernode_runtime import config as runtime_config
from supernode_runtime import launch as runtime_launch

from . import launches as ln
from .superlink import flower_env, flower_exe
from .tls import TlsMaterial

TLS_GOOD = "good"
TLS_EMPTY_CA = "empty-ca"  # FL_TLS_ENABLED=YES without a CA: the appliance must refuse to start the SuperNode
TLS_WRONG_CA = "wrong-ca"  # a valid CA that did not sign the SuperLink's certificate: the handshake fails
TLS_MODES = (TLS_GOOD, TLS_EMPTY_CA, TLS_WRONG_CA)
CONFIGURE_DONE = "systemctl show -p ActiveState --value flower-appliance-configure.service"
PROCESSES = "ps -eo pid,ppid,etime,time,pcpu,rss,args --sort=pid"
# flwr 1.41: a ClientApp process must pull its task within HEARTBEAT_DEFAULT_INTERVAL (30 s, not configurable)
# of the SuperExec claiming it; otherwise the claim expires and the SuperExec starts another flwr-clientapp.
CLAIM_WINDOW_S = 30
STUCK_CLIENTAPPS = 3
# The launch log in the guest: the entrypoint's private directory in the SuperNode container's /tmp
# (supernode_container/entrypoint.py prepare()), readable by the container user that docker exec runs as.
LAUNCH_LOG_GLOB = "/tmp/flwr-warm-clientapp-*/launches.jsonl"
LAUNCH_LOG = f"docker exec {runtime_launch.CONTAINER_NAME} sh -c {shlex.quote('cat ' + LAUNCH_LOG_GLOB)}"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    partition_id: int
    num_partitions: int
    tls: str = TLS_GOOD

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}, got {self.tls!r}")

    @property
    def node_config(self) -> str:
        return f"partition-id={self.partition_id} num-partitions={self.num_partitions}"

    @property
    def healthy(self) -> bool:
        return self.tls == TLS_GOOD


def node_specs(count: int, bad_tls: str | None = None) -> list[NodeSpec]:
    """`count` nodes with partitions 0..count-1; with `bad_tls` the last one gets that TLS fault."""
    specs = [NodeSpec(f"node-{i}", i, count) for i in range(count)]
    if bad_tls is not None:
        last = specs[-1]
        specs[-1] = NodeSpec(last.name, last.partition_id, last.num_partitions, bad_tls)
    return specs


def appliance_context(
    spec: NodeSpec, superlink_address: str, tls: TlsMaterial, wrong_ca: Path | None
) -> dict[str, str]:
    """The ONEAPP_FL_* context variables of one appliance VM."""
    context = {
        "ONEAPP_FL_SUPERLINK_ADDRESS": superlink_address,
        "ONEAPP_FL_NODE_CONFIG": spec.node_config,
        "ONEAPP_FL_TLS_ENABLED": "YES",
        "ONEAPP_FL_LOG_LEVEL": "INFO",
    }
    if spec.tls == TLS_GOOD:
        context["ONEAPP_FL_SUPERLINK_CA_CERT"] = tls.ca_base64()
    elif spec.tls == TLS_EMPTY_CA:
        context["ONEAPP_FL_SUPERLINK_CA_CERT"] = ""
    else:
        if wrong_ca is None:
            raise ValueError("the wrong-ca fault needs an unrelated CA certificate")
        context["ONEAPP_FL_SUPERLINK_CA_CERT"] = base64.b64encode(wrong_ca.read_bytes()).decode("ascii")
    return context


@dataclass
class NodeState:
    spec: NodeSpec
    started_at: float = 0.0
    ssh_s: float | None = None
    ready_s: float | None = None
    status: dict[str, Any] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "partition_id": self.spec.partition_id,
            "tls": self.spec.tls,
            "ssh_s": None if self.ssh_s is None else round(self.ssh_s, 1),
            "ready_s": None if self.ready_s is None else round(self.ready_s, 1),
            "note": self.note,
        }
        if self.status is not None:
            doc["status_errors"] = self.status.get("errors", [])
            doc["supernode_will_start"] = self.status.get("supernode_will_start")
        doc.update(self.extra)
        return doc


class LaunchLogs:
    """Reading the nodes' launch logs (both kinds of nodes provide ``launch_log`` and ``states``)."""

    states: dict[str, NodeState]
    launcher_poll_s = 5.0

    def launch_log(self, name: str) -> str | None:
        raise NotImplementedError

    def launch_events(self, name: str) -> tuple[list[dict[str, Any]], int] | None:
        """The node's launch events and the count of unreadable lines; None without a log."""
        text = self.launch_log(name)
        return None if text is None else ln.parse_events(text)

    def launch_events_of_healthy(self, name: str, attempts: int = 3) -> tuple[list[dict[str, Any]], int] | None:
        """launch_events, tried again (after `launcher_poll_s`) for a healthy node, whose container should have
        a log: under TCG one `docker exec` over SSH can time out while the guest is busy."""
        for attempt in range(attempts if self.states[name].spec.healthy else 1):
            if attempt:
                time.sleep(self.launcher_poll_s)
            found = self.launch_events(name)
            if found is not None:
                return found
        return None

    def wait_launchers(self, timeout: float) -> None:
        """Wait (bounded) until every healthy node's warm launcher has finished its imports, so a run's
        first tasks find it ready. Records the launcher's own import time (``launcher_import_s``, from
        its ``ready`` event) and, the first time, how long the run had to wait for it
        (``launcher_wait_s``). A launcher not ready in time is only said: its shims fall back, and
        the launch counts then fail the run."""
        started = time.monotonic()
        pending = [name for name, state in self.states.items() if state.spec.healthy and state.started_at]
        while pending:
            for name in list(pending):
                found = self.launch_events(name)
                ready = ln.launcher_ready(found[0]) if found else None
                if ready is None:
                    continue
                extra = self.states[name].extra
                extra.setdefault("launcher_wait_s", round(time.monotonic() - started, 1))
                extra["launcher_import_s"] = ready.get("import_seconds")
                extra["launcher_modules"] = ready.get("modules")
                pending.remove(name)
            if not pending:
                return
            if time.monotonic() - started > timeout:
                for name in pending:
                    self.states[name].extra.setdefault("launcher_wait_s", None)
                    say(f"e2e: {name}: warm ClientApp launcher not ready within {timeout:.0f} s")
                return
            time.sleep(self.launcher_poll_s)


class VmNodes(LaunchLogs):
    mode = "vm"

    def __init__(
        self,
        specs: list[NodeSpec],
        *,
        image: Path,
        firmware: str,
        machine: str = "q35",
        workdir: Path,
        superlink_address: str,
        tls: TlsMaterial,
        wrong_ca: Path | None = None,
        memory: int = 1536,
        cpus: int = 1,
        accel: Accelerator | None = None,
        ssh_timeout: float = 900,
    ) -> None:
        self.specs = specs
        self.image = image
        self.firmware = firmware
        self.machine = machine
        self.workdir = workdir
        self.superlink_address = superlink_address
        self.tls = tls
        self.wrong_ca = wrong_ca
        self.memory = memory
        self.cpus = cpus
        self.accel = accel
        self.ssh_timeout = ssh_timeout
        self.states = {spec.name: NodeState(spec) for spec in specs}
        self.booted: dict[str, appliance.BootedAppliance] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> VmNodes:
        try:
            self._boot()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()

    def _boot(self) -> None:
        accel = self.accel or accel_probe.for_disk(self.image)
        started: dict[str, appliance.StartedAppliance] = {}
        for spec in self.specs:  # start every VM before waiting for any, so they boot side by side
            workdir = self.workdir / spec.name
            context = appliance_context(spec, self.superlink_address, self.tls, self.wrong_ca)
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "context.json").write_text(
                json.dumps({k: ("<ca>" if k.endswith("CA_CERT") and v else v) for k, v in context.items()}, indent=2)
            )
            vm = self._stack.enter_context(
                appliance.start(
                    self.image,
                    workdir,
                    context,
                    firmware=self.firmware,
                    machine=self.machine,
                    memory=self.memory,
                    cpus=self.cpus,
                    accel=accel,
                )
            )
            self.states[spec.name].started_at = vm.vm.started_at
            say(f"e2e: {spec.name} (partition {spec.partition_id}, TLS {spec.tls}) booting; console {vm.vm.serial_log}")
            started[spec.name] = vm
        for name, vm in started.items():
            booted = vm.wait_for_ssh(self.ssh_timeout)
            self.states[name].ssh_s = booted.ssh_seconds
            self.booted[name] = booted
            say(f"e2e: {name} SSH login after {booted.ssh_seconds:.0f} s")

    def _check(self, name: str, command: str) -> str | None:
        try:
            code, out, _ = self.booted[name].run(command, timeout=60)
        except Exception:
            return None
        return out.strip() if code == 0 else None

    def wait_ready(self, timeout: float) -> None:
        """Poll all VMs in turn: a healthy node is ready when its SuperNode container runs; a faulty one
        when its boot sequence has finished (its status then says what is wrong)."""
        deadline = time.monotonic() + timeout
        pending = dict(self.booted)
        while pending:
            for name in list(pending):
                state = self.states[name]
                if state.spec.healthy:
                    done = self._check(name, appliance.READY_CHECK) == "true"
                else:
                    done = self._check(name, CONFIGURE_DONE) in ("active", "failed")
                if done:
                    state.ready_s = time.monotonic() - pending[name].vm.started_at
                    state.status = self.read_status(name)
                    say(f"e2e: {name} ready after {state.ready_s:.0f} s")
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                for name in pending:
                    self.states[name].status = self.read_status(name)
                    self.states[name].note = f"not ready within {timeout:.0f} s"
                return
            time.sleep(5)

    def read_status(self, name: str) -> dict[str, Any] | None:
        out = self._check(name, "cat /run/flower/status.json")
        if not out:
            return None
        try:
            doc = json.loads(out)
        except json.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None

    def supernode_log(self, name: str) -> str:
        return self._check(name, "journalctl -b --no-pager -u flower-supernode.service") or ""

    def launch_log(self, name: str) -> str | None:
        """The SuperNode container's launch log (None: no container, or no log in it yet)."""
        if name not in self.booted:
            return None
        try:
            code, out, _ = self.booted[name].run(LAUNCH_LOG, timeout=60)
        except Exception:
            return None
        return out if code == 0 else None

    def diagnose(self, name: str) -> None:
        """Record the guest's flwr processes; many flwr-clientapp at once mean ClientApps missed their claim window."""
        out = self._check(name, PROCESSES)
        if out is None:
            return
        (self.workdir / name).mkdir(parents=True, exist_ok=True)
        (self.workdir / name / "processes.txt").write_text(out + "\n")
        clientapps = sum(1 for line in out.splitlines() if "flwr-clientapp" in line)
        load = self._check(name, "cat /proc/loadavg") or ""
        state = self.states[name]
        state.extra.update(clientapp_processes=clientapps, loadavg=load)
        if clientapps >= STUCK_CLIENTAPPS:
            state.note = (
                f"{clientapps} flwr-clientapp processes at once (load {load.split(' ')[0] if load else '?'}): "
                f"ClientApps start slower than flwr's {CLAIM_WINDOW_S} s task-claim window, so the SuperExec keeps "
                "starting new ones (guest too slow, e.g. TCG on a busy host)"
            )

    def collect(self, dest: Path, quick: bool = False) -> None:
        """Serial console always; with SSH (not `quick`): journal, status, SuperNode log, processes."""
        for name, booted in self.booted.items():
            target = dest / name
            if quick:
                with contextlib.suppress(Exception):
                    target.mkdir(parents=True, exist_ok=True)
                    (target / "serial.log").write_bytes(booted.vm.serial_log.read_bytes())
                continue
            with contextlib.suppress(Exception):
                self.diagnose(name)
            with contextlib.suppress(Exception):
                booted.collect(target)
            with contextlib.suppress(Exception):
                (target / "supernode.log").write_text(self.supernode_log(name))
            with contextlib.suppress(Exception):
                (target / "launches.jsonl").write_text(self.launch_log(name) or "")


class LocalNodes(LaunchLogs):
    """flower-supernode processes on this host, one per spec (each in its own process group).

    The options and environment are what the appliance would give its container for the same
    CONTEXT (:meth:`resolve`), except the CA path (this host's copy), ``--port`` (the container has
    its own network namespace; here two nodes share one) and the launch log's path
    (``FL_WARM_CLIENTAPP_LOG`` in the node's work directory, so it outlives the entrypoint's private
    directory).
    """

    mode = "local"
    launcher_poll_s = 0.5

    def __init__(
        self,
        specs: list[NodeSpec],
        *,
        workdir: Path,
        superlink_address: str,
        tls: TlsMaterial,
        wrong_ca: Path | None = None,
        entrypoint: bool = False,
    ) -> None:
        self.specs = specs
        self.workdir = workdir
        self.superlink_address = superlink_address
        self.tls = tls
        self.wrong_ca = wrong_ca
        self.entrypoint = entrypoint
        self.states = {spec.name: NodeState(spec) for spec in specs}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def resolve(self, spec: NodeSpec) -> tuple[list[str], dict[str, str]] | str:
        """flower-supernode's options and the container's environment, as the appliance builds them from
        this node's CONTEXT; or why the appliance would not start the SuperNode (its validation errors)."""
        context = appliance_context(spec, self.superlink_address, self.tls, self.wrong_ca)
        resolution = runtime_config.resolve([("context", context)])
        if resolution.config is None:
            return "; ".join(f"{error.variable}: {error.reason}" for error in resolution.errors)
        ca = self.workdir / spec.name / "ca.pem"
        if resolution.config.ca_cert_pem is not None:  # as the boot sequence writes the guest's CA file
            ca.parent.mkdir(parents=True, exist_ok=True)
            ca.write_text(resolution.config.ca_cert_pem)
        options = runtime_launch.supernode_args(resolution.config, root_certificates=str(ca))
        env = {
            name: value
            for name, _, value in (
                item.partition("=") for item in runtime_launch.container_env(resolution.config, None)
            )
        }
        argv = [*options, "--port", str(free_port())]
        runtime_launch.check_argv_lengths(argv)
        return argv, env

    def argv(self, spec: NodeSpec) -> list[str] | None:
        """The flower-supernode command line; None when the appliance would not start one (TLS without a CA)."""
        resolved = self.resolve(spec)
        return None if isinstance(resolved, str) else [flower_exe("flower-supernode"), *resolved[0]]

    def __enter__(self) -> LocalNodes:
        try:
            for spec in self.specs:
                state = self.states[spec.name]
                resolved = self.resolve(spec)
                argv = self.argv(spec)
                if isinstance(resolved, str) or argv is None:
                    state.note = f"not started: the appliance refuses this configuration ({resolved})"
                    continue
                home = self.workdir / spec.name / "flwr-home"
                home.mkdir(parents=True, exist_ok=True)
                env = {**resolved[1], **flower_env(home)}  # the caller's environment wins (tests set FL_WARM_*)
                if self.entrypoint:  # as the container runs it: tini -- python -m supernode_container.entrypoint
                    argv = [sys.executable, "-m", "supernode_container.entrypoint", *argv[1:]]
                    env["FL_WARM_CLIENTAPP_LOG"] = str(self.workdir / spec.name / "launches.jsonl")
                log = self.workdir / spec.name / "supernode.log"
                with log.open("ab") as out:
                    out.write(f"$ {' '.join(argv)}\n".encode())
                    out.flush()
                    self.processes[spec.name] = subprocess.Popen(
                        argv,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        start_new_session=True,
                    )
                state.started_at = time.monotonic()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for proc in self.processes.values():
            kill_group(proc, grace=10)

    def wait_ready(self, timeout: float) -> None:
        time.sleep(2)
        for name, state in self.states.items():
            proc = self.processes.get(name)
            if proc is not None and proc.poll() is None:
                state.ready_s = time.monotonic() - state.started_at
            elif proc is not None:
                state.note = f"flower-supernode exited ({proc.returncode})"

    def read_status(self, name: str) -> dict[str, Any] | None:
        return None

    def supernode_log(self, name: str) -> str:
        path = self.workdir / name / "supernode.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def launch_log(self, name: str) -> str | None:
        path = self.workdir / name / "launches.jsonl"
        if not self.entrypoint or not path.exists():
            return None
        return path.read_text(errors="replace")

    def collect(self, dest: Path, quick: bool = False) -> None:
        for name in self.states:
            source = self.workdir / name / "supernode.log"
            if source.exists() and dest != self.workdir:
                (dest / name).mkdir(parents=True, exist_ok=True)
                (dest / name / "supernode.log").write_text(source.read_text(errors="replace"))
