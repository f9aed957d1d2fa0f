"""The flwr CLI of flwr 1.41, driven as a subprocess with timeouts.

How flwr 1.41 addresses a SuperLink: not from the app's pyproject.toml any
more. SuperLink *connections* live in the Flower configuration file
``$FLWR_HOME/config.toml``::

    [superlink]
    default = "e2e"

    [superlink.e2e]
    address = "127.0.0.1:PORT"          # the SuperLink's one HTTP port (Control API too)
    root-certificates = "/abs/ca.pem"   # or: insecure = true

and the commands take the connection name: ``flwr run APP e2e``,
``flwr ls e2e --format json``, ``flwr supernode list e2e --format json``,
``flwr stop RUN_ID e2e``. (A ``[tool.flwr.federations]`` table in the app's
pyproject.toml is "legacy": ``flwr run`` migrates it into config.toml and
comments it out in the pyproject.toml.) Each run of the runner uses its own
FLWR_HOME, so ~/.flwr is never read or written.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance_build.progress import kill_group

from .superlink import flower_env, flower_exe

RUN_STARTED = re.compile(r"Successfully started run (\d+)")
FINISHED = "finished"


class FlwrError(RuntimeError):
    """A flwr CLI command failed, timed out or gave an unexpected answer."""


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"unsupported run-config value {value!r}")


def connection_toml(name: str, address: str, root_certificates: Path | None) -> str:
    lines = [
        "[superlink]",
        f"default = {toml_value(name)}",
        "",
        f"[superlink.{name}]",
        f"address = {toml_value(address)}",
    ]
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {toml_value(str(root_certificates.resolve()))}")
    return "\n".join(lines) + "\n"


def run_config_toml(values: dict[str, object]) -> str:
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items())


def parse_json_output(text: str) -> dict[str, Any]:
    """The JSON document of a ``--format json`` command (tolerates lines before it)."""
    start = text.find("{")
    if start < 0:
        raise FlwrError(f"no JSON in flwr output: {text[-500:]!r}")
    try:
        doc = json.loads(text[start:])
    except json.JSONDecodeError as exc:
        raise FlwrError(f"flwr output is not JSON ({exc}): {text[-500:]!r}") from exc
    if not isinstance(doc, dict):
        raise FlwrError(f"flwr output is not a JSON object: {text[-500:]!r}")
    return doc


def online_node_ids(doc: dict[str, Any]) -> list[str]:
    """Node ids with status "online" in ``flwr supernode list --format json``."""
    return sorted(str(n.get("node-id")) for n in doc.get("nodes", []) if n.get("status") == "online")


def run_status(doc: dict[str, Any], run_id: int) -> str:
    """The status ("pending", "running", "finished:completed", ...) of `run_id` in ``flwr ls`` JSON."""
    for run in doc.get("runs", []):
        if str(run.get("run-id")) == str(run_id):
            return str(run.get("status", ""))
    raise FlwrError(f"run {run_id} is not listed by the SuperLink")


def results_finished(path: Path) -> bool:
    """True when the ServerApp's results file says it is done (completed or failed)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("status") in ("completed", "failed")


@dataclass
class RunHandle:
    """A submitted run and its ``flwr run --stream`` process (log streaming)."""

    run_id: int
    process: subprocess.Popen[bytes]
    log: Path
    submitted_at: float

    def close(self) -> None:
        kill_group(self.process, grace=10)


@dataclass
class FlwrCli:
    home: Path
    address: str
    root_certificates: Path | None
    log: Path
    name: str = "e2e"
    timeout: float = 120.0
    _handles: list[RunHandle] = field(default_factory=list)

    def write_config(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "config.toml"
        path.write_text(connection_toml(self.name, self.address, self.root_certificates))
        return path

    def command(self, *args: str) -> list[str]:
        return [flower_exe("flwr"), *args]

    def _record(self, argv: list[str], output: str) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as out:
            out.write(f"\n$ {' '.join(argv)}\n{output}")

    def call(self, *args: str, timeout: float | None = None) -> str:
        argv = self.command(*args)
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=flower_env(self.home),
                timeout=timeout or self.timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            self._record(argv, f"(timed out after {exc.timeout} s)\n")
            raise FlwrError(f"{' '.join(args[:2])} timed out after {exc.timeout:.0f} s") from exc
        self._record(argv, proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise FlwrError(
                f"flwr {' '.join(args[:2])} failed (exit {proc.returncode}): "
                f"{(proc.stdout + proc.stderr).strip()[-600:]}"
            )
        return proc.stdout

    def json_call(self, *args: str, timeout: float | None = None) -> dict[str, Any]:
        doc = parse_json_output(self.call(*args, "--format", "json", timeout=timeout))
        if doc.get("success") is False:
            raise FlwrError(f"flwr {' '.join(args[:2])}: {doc.get('error-message', doc)}")
        return doc

    # -- SuperNodes --------------------------------------------------------------------
    def online_nodes(self) -> list[str]:
        return online_node_ids(self.json_call("supernode", "list", self.name))

    def wait_for_nodes(
        self, count: int, timeout: float, poll: float = 10.0, on_change: Any = None
    ) -> tuple[float, list[str]]:
        """Seconds until at least `count` SuperNodes are online, and their ids; FlwrError on timeout."""
        start = time.monotonic()
        seen: list[str] = []
        last_error = ""
        while True:
            try:
                seen = self.online_nodes()
                last_error = ""
            except FlwrError as exc:
                last_error = str(exc)
            if on_change is not None:
                on_change(time.monotonic() - start, seen)
            if len(seen) >= count:
                return time.monotonic() - start, seen
            if time.monotonic() - start > timeout:
                detail = f"; last error: {last_error}" if last_error else ""
                raise FlwrError(f"{len(seen)} of {count} SuperNodes online after {timeout:.0f} s{detail}")
            time.sleep(poll)

    # -- runs ------------------------------------------------------------------------------
    def submit(self, app: Path, run_config: dict[str, object], workdir: Path, timeout: float = 180) -> RunHandle:
        """``flwr run APP CONNECTION --stream -c overrides.toml``; returns once the run id is known."""
        workdir.mkdir(parents=True, exist_ok=True)
        overrides = workdir / "run-config.toml"
        overrides.write_text(run_config_toml(run_config))
        log = workdir / "flwr-run.log"
        argv = self.command("run", str(app.resolve()), self.name, "--stream", "--run-config", str(overrides))
        with log.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=flower_env(self.home),
                start_new_session=True,
            )
        submitted = time.monotonic()
        try:
            while True:
                found = RUN_STARTED.search(log.read_text(errors="replace"))
                if found:
                    handle = RunHandle(int(found.group(1)), proc, log, submitted)
                    self._handles.append(handle)
                    return handle
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-1500:]
                    raise FlwrError(f"flwr run exited ({proc.returncode}) without starting a run:\n{tail}")
                if time.monotonic() - submitted > timeout:
                    raise FlwrError(f"flwr run did not start a run within {timeout:.0f} s (log {log})")
                time.sleep(1)
        except BaseException:
            kill_group(proc, grace=5)
            raise

    def status(self, run_id: int) -> str:
        return run_status(self.json_call("ls", self.name, "--run-id", str(run_id)), run_id)

    def wait_for_run(
        self, handle: RunHandle, timeout: float, results: Path | None = None, safety_poll: float = 60.0
    ) -> str:
        """The final status of the run ("finished:completed", ...); on timeout the run is stopped.

        Each ``flwr ls`` is a Python start on a host that may be busy emulating VMs, so the
        SuperLink is asked only when the log stream ended, the results file says the
        ServerApp is done, or every `safety_poll` seconds.
        """
        deadline = handle.submitted_at + timeout
        status = ""
        next_ask = time.monotonic() + safety_poll
        stream_ended = False
        while time.monotonic() < deadline:
            hint = False
            if not stream_ended and handle.process.poll() is not None:
                stream_ended = hint = True
            if results is not None and results_finished(results):
                hint = True
            if hint or time.monotonic() >= next_ask:
                try:
                    status = self.status(handle.run_id)
                except FlwrError as exc:
                    status = f"unknown ({exc})"
                if status.startswith(FINISHED):
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        handle.process.wait(timeout=30)  # the log stream ends with the run
                    handle.close()
                    return status
                next_ask = time.monotonic() + (10.0 if hint else safety_poll)
            time.sleep(2)
        self.stop(handle.run_id)
        handle.close()
        raise FlwrError(f"run {handle.run_id} not finished after {timeout:.0f} s (last status {status}); stopped it")

    def stop(self, run_id: int) -> None:
        with contextlib.suppress(FlwrError):
            self.call("stop", str(run_id), self.name, timeout=60)

    def close(self) -> None:
        """Stop every log-stream process this CLI started (by pid)."""
        for handle in self._handles:
            handle.close()
        self._handles.clear()
