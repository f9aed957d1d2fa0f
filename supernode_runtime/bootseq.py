"""The SuperNode boot sequence (run by ``flower-appliance-configure.service``).

Steps, each logged as ``[step N/7] name: ok|warning|error|skipped detail`` on
stdout (the journal) and recorded in the status file:

1. read-context        - CONTEXT CD (or mounted copy) + override file + OneGate token
2. validate-variables  - every variable checked before anything starts
3. tls-material        - CA written to /etc/flower/tls/ca.pem (0644), or removed
4. superlink-discovery - static FL_SUPERLINK_ADDRESS, else OneGate ``GET /service``
5. gpu-detection       - lsmod + nvidia-smi + CDI spec (nvidia-ctk); CPU fallback is a warning
6. launch-spec         - docker run argv written to /run/flower/supernode.json
7. onegate-report      - ``PUT /vm`` READY / FL_GPU_AVAILABLE (warning if unreachable)

Any error (an invalid value, a context line that could carry one of our
variables but cannot be read, no SuperLink address, unreadable context or build
info) means the launch spec is not written - it is removed at the start of
every run - so ``flower-supernode.service`` does not start a container; the VM
stays up and the status/banner name the variables. Re-running gives the same
result; every output is rewritten atomically.

``check-context`` runs this same sequence with ``BootOptions(dry_run=True)``: the
same reading, validation and decisions, but nothing is written, mounted, probed
or contacted; what depends on the live machine (OneGate discovery, the GPU
probe) is listed in :attr:`BootSequence.deferred` instead.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from supernode_runtime.commands import Runner, run_command
from supernode_runtime.config import EffectiveConfig, Resolution, VariableError, resolve
from supernode_runtime.context import Context, ContextError, load_context
from supernode_runtime.fsutil import atomic_write, remove_file
from supernode_runtime.gpu import FALLBACK_WARNING, GpuResult, detect_gpu, docker_gpu_flags, start_persistence_daemon
from supernode_runtime.launch import (
    BuildInfo,
    LaunchError,
    docker_run_argv,
    load_build_info,
    write_launch_spec,
)
from supernode_runtime.onegate import (
    OneGateAccess,
    OneGateError,
    find_superlink_address,
    get_service,
    put_vm_attributes,
)
from supernode_runtime.paths import Paths
from supernode_runtime.status import StatusReport, StepRecord, write_status
from supernode_runtime.variables import BY_NAME, looks_like_ours

STEPS = (
    "read-context",
    "validate-variables",
    "tls-material",
    "superlink-discovery",
    "gpu-detection",
    "launch-spec",
    "onegate-report",
)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class BootOptions:
    """Knobs of the boot sequence (tests shorten waits and swap the runner)."""

    discovery_attempts: int = 30
    discovery_interval: float = 10.0
    onegate_timeout: float = 5.0
    runner: Runner = run_command
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], str] = _utc_now
    out: TextIO | None = None
    dry_run: bool = False
    """check-context: decide everything, change nothing (see the module docstring)."""
    context: Context | None = None
    """Use this context instead of reading the CD (check-context)."""


@dataclass
class BootResult:
    """What the boot sequence produced."""

    report: StatusReport
    argv: list[str] | None = None
    deferred: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.report.errors


@dataclass
class _State:
    context: Context = field(default_factory=Context)
    access: OneGateAccess | None = None
    resolution: Resolution = field(default_factory=Resolution)
    config: EffectiveConfig | None = None
    gpu: GpuResult | None = None


class BootSequence:
    """Runs the steps in order; see the module docstring."""

    def __init__(self, paths: Paths, options: BootOptions | None = None) -> None:
        self.paths = paths
        self.opt = options or BootOptions()
        self.out = self.opt.out or sys.stdout
        self.report = StatusReport(generated_at=self.opt.now())
        self.state = _State()
        self.deferred: list[str] = []
        self.dry = self.opt.dry_run

    # --- recording -----------------------------------------------------------------

    def _log(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _step(self, number: int, outcome: str, detail: str = "") -> None:
        record = StepRecord(number, len(STEPS), STEPS[number - 1], outcome, detail)
        self.report.steps.append(record)
        self._log(record.line())

    def _error(self, err: VariableError | str, variable: str = "") -> None:
        if isinstance(err, VariableError):
            entry = {**err.as_dict(), "message": err.message()}
        else:
            entry = {"variable": variable, "message": err}
        self.report.errors.append(entry)
        self._log(f"ERROR: {entry['message']}")

    def _warn(self, message: str) -> None:
        self.report.warnings.append(message)
        self._log(f"WARNING: {message}")

    @property
    def _blocked(self) -> bool:
        return bool(self.report.errors)

    # --- steps ------------------------------------------------------------------------

    def read_context(self) -> None:
        try:
            ctx = self.opt.context if self.opt.context is not None else load_context(self.paths, self.opt.runner)
        except ContextError as exc:
            self._error(f"context: {exc}")
            self._step(1, "error", str(exc))
            return
        self.state.context = ctx
        for layer in ctx.layers:
            for problem in layer.problems:
                if problem.error:
                    key = problem.key if problem.key and looks_like_ours(problem.key) else ""
                    self._error(f"context not read: {layer.path}: {problem}", key)
                else:
                    self._warn(f"context parse: {layer.path}: {problem}")
        endpoint = ctx.raw("ONEGATE_ENDPOINT")
        self.state.access = OneGateAccess.from_context(endpoint, ctx.raw("VMID"), ctx.token)
        if endpoint and self.state.access is None:
            self._warn("ONEGATE_ENDPOINT/VMID/token incomplete or malformed; OneGate not used")
        sources = [layer.path for layer in ctx.layers]
        count = sum(len(layer.values) for layer in ctx.layers)
        detail = f"{count} values from {', '.join(sources)}" if sources else "; ".join(ctx.notes)
        onegate = "OneGate available" if self.state.access else "no OneGate"
        outcome = "error" if ctx.errors else "warning" if ctx.warnings or not sources else "ok"
        unread = f"; {len(ctx.errors)} line(s) that may hold FL_* variables not read" if ctx.errors else ""
        self._step(1, outcome, f"{detail}; {onegate}{unread}")

    def validate(self) -> None:
        layers = [(layer.path, layer.values) for layer in self.state.context.layers]
        res = resolve(layers)
        self.state.resolution = res
        self.report.config = res.masked()
        for warning in res.warnings:
            self._warn(warning)
        for err in res.errors:
            self._error(err)
        self.state.config = res.config
        if res.errors:
            names = ", ".join(e.variable for e in res.errors)
            self._step(2, "error", f"{len(res.errors)} invalid: {names}")
        else:
            self._step(2, "warning" if res.warnings else "ok", f"{len(res.settings)} variables valid")

    def tls_material(self) -> None:
        cfg = self.state.config
        if cfg is None or self._blocked:
            removed = not self.dry and remove_file(self.paths.tls_ca)
            self._step(3, "skipped", "configuration has errors" + ("; old CA removed" if removed else ""))
            return
        if self.dry:
            what = f"CA certificate would be written to {self.paths.tls_ca}" if cfg.tls_enabled else "TLS off"
            self._step(3, "ok" if cfg.tls_enabled else "skipped", what + " (check only)")
            return
        if not cfg.tls_enabled or cfg.ca_cert_pem is None:
            removed = remove_file(self.paths.tls_ca)
            self._step(3, "skipped", "TLS off (--insecure)" + ("; old CA removed" if removed else ""))
            return
        try:
            atomic_write(self.paths.tls_ca, cfg.ca_cert_pem, mode=0o644)
        except OSError as exc:
            self._error(f"cannot write {self.paths.tls_ca}: {exc}")
            self._step(3, "error", str(exc))
            return
        self._step(3, "ok", f"CA certificate written to {self.paths.tls_ca}")

    def discover(self) -> None:
        cfg = self.state.config
        if cfg is None or self._blocked:
            self._step(4, "skipped", "configuration has errors")
            return
        setting = self.state.resolution.settings["FL_SUPERLINK_ADDRESS"]
        if cfg.superlink_address:
            self.report.superlink = {"address": cfg.superlink_address, "source": setting.source}
            self._step(4, "ok", f"{cfg.superlink_address} (static, {setting.source})")
            return
        if self.dry and self.state.access is not None:
            self.deferred.append("FL_SUPERLINK_ADDRESS is empty: the boot will look the SuperLink up through OneGate")
            self._step(4, "skipped", "would ask OneGate for the SuperLink address (not contacted here)")
            return
        reason = self._discover_via_onegate()
        if reason is None:
            return
        var = BY_NAME["FL_SUPERLINK_ADDRESS"]
        self._error(VariableError("FL_SUPERLINK_ADDRESS", "''", reason, var.accepted))
        self._step(4, "error", f"no SuperLink address: {reason}")

    def _discover_via_onegate(self) -> str | None:
        """Look the address up through OneGate; None on success, else the reason."""
        access = self.state.access
        if access is None:
            return "the boot needs OneGate discovery (ONEGATE_ENDPOINT, VMID and a token), not present here"
        reason = "not tried"
        attempts = max(1, self.opt.discovery_attempts)
        for attempt in range(1, attempts + 1):
            try:
                found = find_superlink_address(get_service(access, self.opt.onegate_timeout), access.vmid)
            except OneGateError as exc:
                reason = f"OneGate: {exc}"
            else:
                for rejected in found.rejected:
                    self._warn(f"ignored published SuperLink address: {rejected}")
                if found.address:
                    assert self.state.config is not None
                    self.state.config = dataclasses.replace(self.state.config, superlink_address=found.address)
                    self.report.superlink = {"address": found.address, "source": found.where}
                    self._step(4, "ok", f"{found.address} (OneGate: {found.where})")
                    return None
                reason = f"empty and the SuperLink address is {found.where}"
            if attempt < attempts:
                self._log(f"superlink-discovery: attempt {attempt}/{attempts}: {reason}")
                self.opt.sleep(self.opt.discovery_interval)
        return f"{reason} (after {attempts} attempts)"

    def gpu_detection(self) -> None:
        cfg = self.state.config
        if cfg is None or self._blocked:
            self.report.gpu = {"requested": None, "FL_GPU_AVAILABLE": "NO", "reason": "not checked"}
            self._step(5, "skipped", "configuration has errors")
            return
        if self.dry and cfg.gpu_enabled:
            self.deferred.append(
                "FL_GPU_ENABLED=YES: the boot will probe lsmod, nvidia-smi, docker and nvidia-ctk (CDI); CPU if absent"
            )
            self.report.gpu = {"requested": True, "FL_GPU_AVAILABLE": "NO", "reason": "not probed (check only)"}
            self._step(5, "skipped", "would probe the GPU (check only); CPU fallback if none")
            return
        gpu = detect_gpu(
            cfg.gpu_enabled,
            self.paths.validate_gpu_script,
            self.opt.runner,
            cuda_visible_devices=cfg.cuda_visible_devices,
            cdi_spec=self.paths.cdi_spec,
        )
        self.state.gpu = gpu
        self.report.gpu = {
            "requested": gpu.requested,
            "available": gpu.available,
            "FL_GPU_AVAILABLE": gpu.fl_gpu_available,
            "reason": gpu.reason,
        }
        if not gpu.requested:
            self._step(5, "skipped", gpu.reason)
        elif gpu.available:
            flags = " ".join(docker_gpu_flags(gpu.access, cfg.cuda_visible_devices))
            if gpu.access is not None:
                self.report.gpu["route"] = gpu.access.route
                self.report.gpu["cdi_devices"] = list(gpu.access.cdi_devices)
            persistence = start_persistence_daemon(self.opt.runner)
            self.report.gpu["persistence_daemon"] = persistence
            self._step(5, "ok", f"GPU available ({gpu.reason}); docker flags: {flags}; {persistence}")
        else:
            self._log(FALLBACK_WARNING)
            self.report.warnings.append(f"{FALLBACK_WARNING[len('WARNING: ') :]} ({gpu.reason})")
            if gpu.diagnostics:
                self.report.gpu["diagnostics"] = gpu.diagnostics
                for line in gpu.diagnostics.splitlines():
                    self._log(f"validate-gpu: {line}")
            self._step(5, "warning", f"FL_GPU_AVAILABLE=NO, using CPU ({gpu.reason})")

    def launch_spec(self) -> list[str] | None:
        cfg = self.state.config
        if cfg is None or self._blocked:
            if not self.dry:
                remove_file(self.paths.launch_spec)
            self._step(6, "skipped", "not written: the SuperNode will not start (see errors)")
            return None
        if self.dry:
            return self._dry_launch_spec(cfg)
        try:
            build = load_build_info(self.paths.build_info)
            self.report.build = build.as_dict()
            access = self.state.gpu.access if self.state.gpu is not None and self.state.gpu.available else None
            gpu_ok = access is not None
            argv = docker_run_argv(cfg, access, build, ca_host_path=self.paths.tls_ca)
            extra = {"image": build.supernode_image, "gpu": gpu_ok, "generated_at": self.opt.now()}
            write_launch_spec(self.paths.launch_spec, argv, extra)
        except (LaunchError, OSError) as exc:
            remove_file(self.paths.launch_spec)
            self._error(f"launch spec: {exc}")
            self._step(6, "error", str(exc))
            return None
        self.report.launch_spec = str(self.paths.launch_spec)
        self.report.supernode_will_start = True
        self._step(6, "ok", f"written to {self.paths.launch_spec}")
        return argv

    def _dry_launch_spec(self, cfg: EffectiveConfig) -> list[str] | None:
        """The argv the boot would write (the same checks), with placeholders for what
        only the live machine knows."""
        try:
            if self.paths.build_info.exists():
                build = load_build_info(self.paths.build_info)
            else:
                build = BuildInfo("<supernode_image from build.json>", "?", "cpu")
            if not cfg.superlink_address:
                cfg = dataclasses.replace(cfg, superlink_address="<address from OneGate>")
            argv = docker_run_argv(cfg, None, build, ca_host_path=self.paths.tls_ca)
        except (LaunchError, OSError) as exc:
            self._error(f"launch spec: {exc}")
            self._step(6, "error", str(exc))
            return None
        self.report.supernode_will_start = not self.deferred
        self._step(6, "ok", "would be written (check only)")
        return argv

    def onegate_report(self) -> None:
        access = self.state.access
        if self.dry:
            self._step(7, "skipped", "would publish READY to OneGate" if access else "OneGate not available")
            return
        if access is None:
            self._step(7, "skipped", "OneGate not available")
            return
        attrs = {
            "READY": "YES" if self.report.supernode_will_start else "NO",
            "FL_GPU_AVAILABLE": self.report.gpu.get("FL_GPU_AVAILABLE", "NO"),
        }
        if self.report.errors:
            names = sorted({e["variable"] for e in self.report.errors if e["variable"]})
            attrs["FL_CONFIG_ERRORS"] = ",".join(names) or "see status"
        shown = " ".join(f"{k}={v}" for k, v in attrs.items())
        try:
            put_vm_attributes(access, attrs, self.opt.onegate_timeout)
        except OneGateError as exc:
            self._warn(f"OneGate unreachable, boot continues: {exc}")
            self._step(7, "warning", f"not published ({exc})")
            return
        self._step(7, "ok", f"published {shown}")

    # --- driver -----------------------------------------------------------------------

    def run(self) -> BootResult:
        if not self.dry:
            remove_file(self.paths.launch_spec)  # no stale spec if this run stops early
        self.read_context()
        self.validate()
        self.tls_material()
        self.discover()
        self.gpu_detection()
        argv = self.launch_spec()
        self.onegate_report()
        if self.dry:
            summary = (
                "the boot would NOT start the SuperNode"
                if self.report.errors
                else (
                    "the boot would start the SuperNode" + (" if: " + "; ".join(self.deferred) if self.deferred else "")
                )
            )
            self._log(f"check finished: {summary}; {len(self.report.errors)} error(s)")
            return BootResult(self.report, argv, list(self.deferred))
        write_status(self.paths, self.report)
        summary = "SuperNode will start" if argv else "SuperNode NOT started"
        self._log(f"boot sequence finished: {summary}; {len(self.report.errors)} error(s)")
        return BootResult(self.report, argv)


def run_boot(paths: Paths, options: BootOptions | None = None) -> BootResult:
    """Run the whole boot sequence once."""
    return BootSequence(paths, options).run()
