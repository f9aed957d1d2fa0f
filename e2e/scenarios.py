"""The e2e scenarios: baseline, and with --faults superlink-restart, superlink-late, bad-tls.

One SuperLink per scenario session (TLS on, its own state DB, log and
FLWR_HOME under build/e2e/<scenario>/), at most two SuperNodes (VMs) at a
time, every wait bounded by a timeout. A scenario's failure is recorded in the
summary and the next scenario still runs.
"""

from __future__ import annotations

import contextlib
import re
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance_build.flower.superlink import TlsFiles
from appliance_build.progress import say
from appliance_build.vm.launcher import free_port

from . import launches as ln
from . import summary as sm
from .flwr_cli import FlwrCli, FlwrError
from .nodes import TLS_EMPTY_CA, TLS_WRONG_CA, LocalNodes, NodeSpec, VmNodes, node_specs
from .superlink import E2eSuperLink, running
from .tls import TlsMaterial

APP_DIR = Path(__file__).resolve().parent / "app"
NUM_NODES = 2
COMPLETED = "finished:completed"
FAILED = "finished:failed"
DEVICE_HELPER = "flower_device"
NOT_ENOUGH_NODES = "SuperNodes connected within"
RECONNECTED = re.compile(r"Connection successful after ([0-9.]+) seconds")
CONNECT_ONLY_NOTE = "connect-only: no `flwr run` (nodes, TLS and reconnection checked only)"


@dataclass(frozen=True)
class Options:
    out: Path
    image: str
    image_file: Path | None  # None, firmware and machine too: local nodes, no image
    firmware: str | None
    machine: str | None
    nodes: str  # "vm" | "local"
    rounds: int
    faults: bool
    memory: int
    cpus: int
    ready_timeout: float
    connect_timeout: float
    run_timeout: float
    round_timeout: float
    bad_tls: str
    superlink_db: bool
    connect_only: bool = False


Nodes = VmNodes | LocalNodes


class Scenarios:
    def __init__(self, options: Options, tls: TlsMaterial, wrong_ca: Path) -> None:
        self.o = options
        self.tls = tls
        self.wrong_ca = wrong_ca
        self.reports: list[sm.ScenarioReport] = []  # every scenario started, also when interrupted

    # -- building blocks -------------------------------------------------------------------
    def tls_files(self) -> TlsFiles:
        return TlsFiles(self.tls.ca_cert, self.tls.server_cert, self.tls.server_key)

    @contextlib.contextmanager
    def superlink(self, directory: Path, *, start: bool = True) -> Iterator[tuple[E2eSuperLink, FlwrCli]]:
        database = directory / "superlink-state.db" if self.o.superlink_db else None
        with running(
            directory / "superlink.log",
            flwr_home=directory / "flwr-superlink",
            tls=self.tls_files(),
            database=database,
            port=free_port(),
            start=start,
        ) as link:
            say(
                f"e2e: SuperLink {'on' if start else 'reserved'} {link.host_address} "
                f"(guests: {link.guest_address}); log {link.log}"
            )
            cli = FlwrCli(directory / "flwr-cli", link.host_address, self.tls.ca_cert, directory / "flwr-cli.log")
            cli.write_config()
            try:
                yield link, cli
            finally:
                cli.close()

    def nodes(self, specs: list[NodeSpec], directory: Path, link: E2eSuperLink) -> Nodes:
        if self.o.nodes == "local":
            return LocalNodes(
                specs,
                workdir=directory,
                superlink_address=link.host_address,
                tls=self.tls,
                wrong_ca=self.wrong_ca,
                entrypoint=True,
            )
        assert self.o.image_file is not None and self.o.firmware is not None and self.o.machine is not None
        return VmNodes(
            specs,
            image=self.o.image_file,
            firmware=self.o.firmware,
            machine=self.o.machine,
            workdir=directory,
            superlink_address=link.guest_address,
            tls=self.tls,
            wrong_ca=self.wrong_ca,
            memory=self.o.memory,
            cpus=self.o.cpus,
            ssh_timeout=self.o.ready_timeout,
        )

    def expected_helper(self) -> str | None:
        return DEVICE_HELPER if self.o.nodes == "vm" else None

    def run_app(
        self,
        cli: FlwrCli,
        nodes: Nodes,
        directory: Path,
        label: str,
        *,
        partitions: list[int],
        min_nodes: int,
        wait_nodes_timeout: float | None = None,
        expect_tasks: bool = True,
    ) -> tuple[sm.RunReport, dict[str, Any] | None]:
        """Submit the app, wait for the run to finish (bounded), read its results file, count the ClientApp
        launches of the run on every node (`expect_tasks`: the nodes of `partitions` must have some)."""
        nodes.wait_launchers(self.o.ready_timeout)
        before = {
            name: len(found[0]) if (found := nodes.launch_events_of_healthy(name)) else 0 for name in nodes.states
        }
        results = directory / f"results-{label}.json"
        results.unlink(missing_ok=True)
        run_config: dict[str, object] = {
            "num-server-rounds": self.o.rounds,
            "min-nodes": min_nodes,
            "wait-nodes-timeout": float(wait_nodes_timeout or self.o.connect_timeout),
            "round-timeout": float(self.o.round_timeout),
            "results-path": str(results.resolve()),
        }
        started = time.monotonic()
        report = sm.RunReport(None, "not started", None, str(results))
        say(f"e2e: flwr run ({label}): {self.o.rounds} rounds, min {min_nodes} node(s)")
        try:
            handle = cli.submit(APP_DIR, run_config, directory / label)
            report.run_id = handle.run_id
            report.status = cli.wait_for_run(handle, self.o.run_timeout, results=results)
        except FlwrError as exc:
            report.problems.append(str(exc))
        report.seconds = round(time.monotonic() - started, 1)
        doc = sm.load_results(results)
        report.rounds = sm.round_table(doc)
        losses = " -> ".join(f"{r['eval_loss']:.4f}" for r in report.rounds if r["eval_loss"] is not None)
        times = ", ".join(f"{r['round_s']:.1f} s" for r in report.rounds if r.get("round_s") is not None)
        say(
            f"e2e: run {report.run_id} ({label}): {report.status} after {report.seconds:.0f} s; "
            f"eval loss {losses or '-'}; round times {times or '-'}"
        )
        self.count_launches(report, nodes, before, partitions if expect_tasks else [], sm.replies_per_partition(doc))
        return report, doc

    def count_launches(
        self,
        report: sm.RunReport,
        nodes: Nodes,
        before: dict[str, int],
        partitions: list[int],
        replies: dict[int, int] | None,
    ) -> None:
        """The run's ClientApp launches per node and task (the log's events after `before`), against the
        tasks each node answered (`replies` per partition, from the results file); a pile-up or a fallback
        is a problem of the run, and so is a node of `partitions` without a launch to count."""
        for name, state in nodes.states.items():
            answered = None if replies is None else replies.get(state.spec.partition_id, 0)
            took_part = state.spec.partition_id in partitions or bool(answered)
            found = nodes.launch_events_of_healthy(name)
            if found is None:
                counted = ln.NodeLaunches(log=False)
            else:
                counted = ln.count(ln.since(found[0], before.get(name, 0)), bad_lines=found[1])
            if found is None and not took_part:
                continue  # e.g. the empty-CA node: no SuperNode, so no log, and none expected
            report.launches[name] = {**counted.as_dict(), "replies": answered}
            report.problems += ln.problems(name, counted, took_part=took_part, replies=answered)
        say(
            "e2e: ClientApp launches "
            + "; ".join(
                f"{name}: {doc['launches']} for {doc['replies']} answered task(s), "
                f"max {doc['max_per_task']} per token, {doc['modes'].get(ln.FALLBACK, 0)} fallback(s)"
                if doc["log"]
                else f"{name}: no launch log"
                for name, doc in report.launches.items()
            )
        )

    def check_run(self, report: sm.RunReport, doc: dict[str, Any] | None, partitions: list[int]) -> None:
        if report.status != COMPLETED and not report.problems:
            report.problems.append(f"run status {report.status!r}, expected {COMPLETED!r}")
        report.problems += sm.check_results(
            doc, expected_rounds=self.o.rounds, expected_partitions=partitions, expected_helper=self.expected_helper()
        )

    def completed_run(
        self,
        report: sm.ScenarioReport,
        cli: FlwrCli,
        nodes: Nodes,
        directory: Path,
        label: str,
        *,
        partitions: list[int],
        min_nodes: int = NUM_NODES,
    ) -> None:
        """A `flwr run` that must complete, checked and added to the report; with --connect-only a note instead."""
        if self.o.connect_only:
            report.notes.append(CONNECT_ONLY_NOTE)
            return
        run, doc = self.run_app(cli, nodes, directory, label, partitions=partitions, min_nodes=min_nodes)
        self.check_run(run, doc, partitions)
        report.runs.append(run)

    def wait_nodes(self, cli: FlwrCli, report: sm.ScenarioReport, count: int) -> list[str]:
        try:
            seconds, ids = cli.wait_for_nodes(count, self.o.connect_timeout)
        except FlwrError as exc:
            report.fail(f"SuperNodes did not connect: {exc}")
            return []
        report.timings.setdefault("nodes_online_wait_s", round(seconds, 1))
        say(f"e2e: {len(ids)} SuperNode(s) online ({seconds:.0f} s of waiting)")
        return ids

    def connect_timings(
        self, report: sm.ScenarioReport, link: E2eSuperLink, since: float, count: int, prefix: str = ""
    ) -> None:
        text = link.log.read_text(errors="replace") if link.log.exists() else ""
        first, nth = sm.connect_times(sm.node_activations(text), since, count)
        report.timings[f"{prefix}first_node_s"] = first
        report.timings[f"{prefix}all_nodes_s"] = nth

    @contextlib.contextmanager
    def collecting(self, report: sm.ScenarioReport, nodes: Nodes, directory: Path) -> Iterator[None]:
        """Keep the nodes' logs whatever happens (only the serial consoles when interrupted)."""
        quick = False
        try:
            yield
        except KeyboardInterrupt:
            quick = True
            raise
        finally:
            with contextlib.suppress(Exception):
                nodes.collect(directory, quick=quick)
            report.nodes = {name: state.report() for name, state in nodes.states.items()}
            report.artifacts = str(directory)

    def guarded(self, report: sm.ScenarioReport, body: Any) -> sm.ScenarioReport:
        started = time.monotonic()
        if report not in self.reports:
            self.reports.append(report)
        if self.o.connect_only and not report.description.startswith("[connect-only"):
            report.description = "[connect-only: no flwr run] " + report.description
        say(f"e2e: == scenario {report.name}: {report.description}")
        try:
            body(report)
        except (KeyboardInterrupt, SystemExit):
            report.fail("interrupted")
            raise
        except Exception as exc:
            report.fail(f"{type(exc).__name__}: {exc}")
            (self.o.out / f"{report.name}-traceback.txt").write_text(traceback.format_exc())
        finally:
            report.timings["total_s"] = round(time.monotonic() - started, 1)
            report.finish()
            say(
                f"e2e: == scenario {report.name}: {'ok' if report.ok else 'FAILED'} "
                f"({report.timings['total_s']:.0f} s)"
                + "".join(f"\n   - {p}" for p in report.problems)
                + "".join(f"\n   - {p}" for r in report.runs for p in r.problems)
            )
        return report

    # -- scenarios ---------------------------------------------------------------------------
    def baseline(self, with_restart: bool) -> list[sm.ScenarioReport]:
        """SuperLink up, two nodes boot and join, one run; then (faults) restart the SuperLink, run again."""
        base = sm.ScenarioReport(
            "baseline", f"SuperLink (TLS) up first; {NUM_NODES} SuperNodes boot, join and train {self.o.rounds} rounds."
        )
        restart = sm.ScenarioReport(
            "superlink-restart",
            "Fault (b): the SuperLink is stopped and started again (same port and state) "
            "between two runs; the SuperNodes reconnect by themselves and the second run completes.",
        )
        reports = [base]
        self.reports.append(base)
        if with_restart:
            self.reports.append(restart)
        directory = self.o.out / "baseline"
        partitions = list(range(NUM_NODES))

        def body(report: sm.ScenarioReport) -> None:
            since = time.time()
            with (
                self.superlink(directory) as (link, cli),
                self.nodes(node_specs(NUM_NODES), directory, link) as nodes,
                self.collecting(report, nodes, directory),
            ):
                nodes.wait_ready(self.o.ready_timeout)
                if self.wait_nodes(cli, report, NUM_NODES):
                    self.connect_timings(report, link, since, NUM_NODES)
                    self.completed_run(report, cli, nodes, directory, "run-1", partitions=partitions)
                    report.finish()
                    if with_restart:
                        self.guarded(restart, lambda r: self._restart(r, link, cli, nodes, directory, partitions))

        self.guarded(base, body)
        if restart.timings.get("total_s") and base.timings.get("total_s"):
            base_s, restart_s = float(base.timings["total_s"] or 0), float(restart.timings["total_s"] or 0)
            base.timings["total_s"] = round(base_s - restart_s, 1)
            base.notes.append("total_s leaves out the superlink-restart scenario that ran on the same VMs")
        if with_restart:
            if "total_s" not in restart.timings:  # guarded() never ran it
                restart.fail("not run: the baseline scenario failed before it")
            restart.artifacts = str(directory)
            restart.finish()
            reports.append(restart)
        return reports

    def _restart(
        self,
        report: sm.ScenarioReport,
        link: E2eSuperLink,
        cli: FlwrCli,
        nodes: Nodes,
        directory: Path,
        partitions: list[int],
    ) -> None:
        report.notes.append("same VMs as the baseline scenario (logs in its directory)")
        if link.database is None:
            report.notes.append(
                "SuperLink without a state DB: the SuperNodes get 401 for their old node ids, "
                "exit, and come back through the appliance's 15 s restart loop"
            )
        before = {name: len(nodes.supernode_log(name)) for name in nodes.states}
        old_pid = link.pid
        link.restart(pause=5.0)
        since = time.time()
        report.notes.append(f"SuperLink pid {old_pid} stopped; restarted as pid {link.pid} on the same port")
        time.sleep(5)
        if not self.wait_nodes(cli, report, NUM_NODES):
            return
        self._check_reconnected(report, nodes, before)
        self.completed_run(report, cli, nodes, directory, "run-2-after-restart", partitions=partitions)
        self.connect_timings(report, link, since, NUM_NODES)
        if report.timings.get("first_node_s") is None:
            report.notes.append(
                "no new node activation after the restart: the SuperNodes kept their node ids (state DB) and resumed"
            )

    def _check_reconnected(self, report: sm.ScenarioReport, nodes: Nodes, before: dict[str, int]) -> None:
        """Each SuperNode's own log must say it reconnected after the restart (the DB keeps them "online")."""
        deadline = time.monotonic() + self.o.connect_timeout
        pending = set(before)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                found = RECONNECTED.findall(nodes.supernode_log(name)[before[name] :])
                if found:
                    report.timings[f"{name}_reconnect_s"] = float(found[-1])
                    pending.discard(name)
            if pending:
                time.sleep(10)
        for name in sorted(pending):
            report.fail(f"{name}: its SuperNode log shows no reconnection after the SuperLink restart")

    def superlink_late(self) -> sm.ScenarioReport:
        report = sm.ScenarioReport(
            "superlink-late",
            "Fault (a): the SuperNodes boot while the SuperLink is down; it starts only after "
            "they are ready; they keep retrying and join.",
        )
        directory = self.o.out / "superlink-late"
        partitions = list(range(NUM_NODES))

        def body(report: sm.ScenarioReport) -> None:
            with (
                self.superlink(directory, start=False) as (link, cli),
                self.nodes(node_specs(NUM_NODES), directory, link) as nodes,
                self.collecting(report, nodes, directory),
            ):
                nodes.wait_ready(self.o.ready_timeout)
                report.notes.append("SuperNodes ready (containers running, retrying) before the SuperLink started")
                since = time.time()
                link.start()
                if self.wait_nodes(cli, report, NUM_NODES):
                    self.connect_timings(report, link, since, NUM_NODES)
                    report.notes.append("first_node_s/all_nodes_s count from the SuperLink's start")
                    self.completed_run(report, cli, nodes, directory, "run-1", partitions=partitions)

        return self.guarded(report, body)

    def bad_tls(self) -> sm.ScenarioReport:
        report = sm.ScenarioReport(
            "bad-tls",
            f"Fault (c): one node has FL_TLS_ENABLED=YES with a bad CA ({self.o.bad_tls}); it reports the "
            "error and stays out, a run with min-nodes 1 completes with the other node, and a run that needs both "
            "fails with a clear message instead of hanging.",
        )
        directory = self.o.out / "bad-tls"
        specs = node_specs(NUM_NODES, bad_tls=self.o.bad_tls)
        good = [s.partition_id for s in specs if s.healthy]
        bad = [s for s in specs if not s.healthy]

        def body(report: sm.ScenarioReport) -> None:
            since = time.time()
            with (
                self.superlink(directory) as (link, cli),
                self.nodes(specs, directory, link) as nodes,
                self.collecting(report, nodes, directory),
            ):
                nodes.wait_ready(self.o.ready_timeout)
                for spec in bad:
                    self._check_bad_node_status(report, nodes, spec)
                if not self.wait_nodes(cli, report, len(good)):
                    return
                self.connect_timings(report, link, since, len(good))
                self.completed_run(report, cli, nodes, directory, "run-1-min-nodes-1", partitions=good, min_nodes=1)
                if self.o.connect_only:
                    time.sleep(60)  # no run to wait for: give the bad node time to (wrongly) show up
                online = cli.online_nodes()
                if len(online) != len(good):
                    report.fail(f"{len(online)} SuperNodes online, expected only the {len(good)} good one(s)")
                if not self.o.connect_only:
                    # fails before its first round: no task, so no launch is expected (any would still be checked)
                    strict, strict_doc = self.run_app(
                        cli,
                        nodes,
                        directory,
                        "run-2-min-nodes-2",
                        partitions=good,
                        min_nodes=NUM_NODES,
                        wait_nodes_timeout=60.0,
                        expect_tasks=False,
                    )
                    self._check_clear_failure(strict, strict_doc)
                    report.runs.append(strict)
                for spec in bad:
                    self._check_bad_node_log(report, nodes, spec)

        return self.guarded(report, body)

    def _check_bad_node_status(self, report: sm.ScenarioReport, nodes: Nodes, spec: NodeSpec) -> None:
        state = nodes.states[spec.name]
        if self.o.nodes != "vm":
            report.notes.append(f"{spec.name}: {state.note or 'started with ' + spec.tls}")
            return
        status = state.status
        if status is None:
            report.fail(f"{spec.name}: no /run/flower/status.json")
            return
        errors = status.get("errors", [])
        if spec.tls == TLS_EMPTY_CA:
            if not any("FL_SUPERLINK_CA_CERT" in str(e.get("variable", "")) for e in errors):
                report.fail(f"{spec.name}: status.json errors do not name FL_SUPERLINK_CA_CERT: {errors}")
            if status.get("supernode_will_start"):
                report.fail(f"{spec.name}: the SuperNode was started despite the configuration error")
            state.note = "; ".join(str(e.get("message", e)) for e in errors)[:300]
        elif spec.tls == TLS_WRONG_CA:
            state.note = "CA is well-formed, so status.json has no error; the TLS handshake must fail"

    def _check_bad_node_log(self, report: sm.ScenarioReport, nodes: Nodes, spec: NodeSpec) -> None:
        if spec.tls != TLS_WRONG_CA:
            return
        log = nodes.supernode_log(spec.name).lower()
        if not any(word in log for word in ("certificate", "ssl", "tls")):
            report.fail(f"{spec.name}: its SuperNode log shows no TLS/certificate error")

    def _check_clear_failure(self, run: sm.RunReport, doc: dict[str, Any] | None) -> None:
        """The run that needs both nodes must fail by itself, saying that nodes are missing."""
        problems = []
        if run.status != FAILED:
            problems.append(f"run status {run.status!r}, expected {FAILED!r} (the ServerApp should give up)")
        error = str((doc or {}).get("error") or "")
        if NOT_ENOUGH_NODES not in error:
            problems.append(f"the ServerApp did not fail with a clear 'not enough SuperNodes' message: {error!r}")
        run.problems += problems
        run.status = f"{run.status} (expected failure)" if not problems else run.status
