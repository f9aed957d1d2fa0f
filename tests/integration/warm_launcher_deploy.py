"""A local Flower deployment with the SuperNodes started as the container starts them.

A real ``flower-superlink`` (TLS, 127.0.0.1, :func:`e2e.superlink.running`), two real
``flower-supernode`` processes in subprocess isolation (:class:`e2e.nodes.LocalNodes`, but through
``python -m supernode_container.entrypoint``, which puts the ``flwr-clientapp`` shim first on PATH
and supervises the warm launcher, or with ``FL_WARM_CLIENTAPP=NO`` execs flower-supernode
stock), and ``flwr run`` of the e2e app (:class:`e2e.flwr_cli.FlwrCli`).

The real ``flwr-clientapp`` can be slowed down by ``warm_launcher_site/sitecustomize.py``
(``FL_TEST_CLIENTAPP_DELAY``), which also logs each start of it; the shim and the launcher log
theirs (``FL_WARM_CLIENTAPP_LOG``): both go to one JSON-lines file, read back as :class:`Launches`.
Used by ``test_warm_launcher.py`` and by ``warm_launcher_benchmark.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance_build.flower.superlink import TlsFiles
from e2e import tls as e2e_tls
from e2e.flwr_cli import FlwrCli, FlwrError
from e2e.nodes import LocalNodes, NodeSpec, node_specs
from e2e.superlink import running

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "e2e" / "app"
SITE_DIR = Path(__file__).resolve().parent / "warm_launcher_site"
NODES = 2


class ContainerNodes(LocalNodes):
    """LocalNodes whose flower-supernode runs under the container's entrypoint (same options)."""

    def argv(self, spec: NodeSpec) -> list[str] | None:
        base = super().argv(spec)
        if base is None:
            return None
        return [sys.executable, "-m", "supernode_container.entrypoint", *base[1:]]


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` (every helper here builds its processes' environment from it)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Launches:
    events: list[dict[str, Any]]

    def of(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event and all(e.get(k) == v for k, v in match.items())]

    def per_node(self, event: str, **match: Any) -> Counter[int]:
        """How many `event`s per SuperExec (one per node), e.g. ClientApp launches per node."""
        return Counter(int(e["parent_pid"]) for e in self.of(event, **match) if e.get("parent_pid"))

    def warm_start_seconds(self) -> list[float]:
        """Per warm task: shim process start (exec) -> the child calls flwr_clientapp()."""
        return [round(e["t"] - e["shim_started"], 4) for e in self.of("start") if e.get("shim_started")]

    def stock_start_seconds(self) -> list[float]:
        """Per stock task: flwr-clientapp process start (exec) -> its imports done, flwr_clientapp() next."""
        starts = {(e["pid"]): e for e in self.of("real-start")}
        return [round(e["t"] - starts[e["pid"]]["started"], 4) for e in self.of("real-entry") if e["pid"] in starts]


@dataclass
class Outcome:
    status: str
    seconds: float
    results: dict[str, Any] | None
    launches: Launches
    workdir: Path
    problems: list[str] = field(default_factory=list)
    launcher_memory: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def completed_rounds(self) -> int:
        rounds = (self.results or {}).get("rounds", [])
        return sum(1 for r in rounds if r.get("eval_loss") is not None)

    def round_seconds(self) -> list[float]:
        """Per-round wall time from the ServerApp's results (start of round n+1 minus start of round n)."""
        rounds = (self.results or {}).get("rounds", [])
        starts = [float(r["started_s"]) for r in rounds if "started_s" in r]
        ends = [*starts[1:], float((self.results or {}).get("duration_s", starts[-1] if starts else 0))]
        return [round(b - a, 3) for a, b in zip(starts, ends, strict=True)][: self.completed_rounds]

    def logs(self) -> str:
        """The tails of the deployment's logs, for an assertion message."""
        parts = []
        for path in sorted(self.workdir.rglob("*.log")):
            parts.append(f"--- {path.relative_to(self.workdir)}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Pss, Private_* (KiB) of a process."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty"):
                out[key] = int(value.split()[0])
    return out


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def deploy(
    workdir: Path,
    *,
    warm: bool,
    delay: float,
    rounds: int,
    round_timeout: float,
    run_timeout: float,
    connect_timeout: float = 90.0,
) -> Outcome:
    """One SuperLink, two SuperNodes (warm launcher on or off), one `flwr run`; everything stopped after."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "launches.jsonl"
    env = {
        "PYTHONPATH": os.pathsep.join([str(SITE_DIR), str(REPO)]),
        "FL_WARM_CLIENTAPP": "YES" if warm else "NO",
        "FL_WARM_CLIENTAPP_LOG": str(log),
        "FL_TEST_REAL_LOG": str(log),
        "FL_TEST_CLIENTAPP_DELAY": str(delay),
        "FLWR_LOG_LEVEL": "INFO",
    }
    material = e2e_tls.create(workdir / "tls")
    files = TlsFiles(material.ca_cert, material.server_cert, material.server_key)
    started = time.monotonic()
    status, problems, memory = "not started", [], {}
    results = workdir / "results.json"
    with (
        patched_environ(env),
        running(workdir / "superlink.log", flwr_home=workdir / "flwr-superlink", tls=files) as link,
    ):
        cli = FlwrCli(workdir / "flwr-cli", link.host_address, material.ca_cert, workdir / "flwr-cli.log")
        cli.write_config()
        try:
            with ContainerNodes(
                node_specs(NODES), workdir=workdir, superlink_address=link.host_address, tls=material
            ) as nodes:
                cli.wait_for_nodes(NODES, connect_timeout, poll=1.0)
                for ready in (e for e in read_events(log) if e["event"] == "ready"):
                    memory[str(ready["pid"])] = smaps_rollup(int(ready["pid"]))  # idle: before any task
                run_config: dict[str, object] = {
                    "num-server-rounds": rounds,
                    "min-nodes": NODES,
                    "wait-nodes-timeout": connect_timeout,
                    "round-timeout": round_timeout,
                    "local-steps": 5,
                    "results-path": str(results.resolve()),
                }
                started = time.monotonic()
                handle = cli.submit(APP_DIR, run_config, workdir / "run")
                status = cli.wait_for_run(handle, run_timeout, results=results, safety_poll=10.0)
                nodes.wait_ready(0)  # notes a SuperNode that exited meanwhile
                problems += [f"{n}: {s.note}" for n, s in nodes.states.items() if s.note]
        except FlwrError as exc:
            problems.append(str(exc))
        finally:
            cli.close()
    doc = json.loads(results.read_text()) if results.exists() else None
    return Outcome(
        status, round(time.monotonic() - started, 1), doc, Launches(read_events(log)), workdir, problems, memory
    )
