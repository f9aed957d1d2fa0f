"""Helpers for supernode_runtime tests: fake root, fake PATH programs, fake OneGate."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from supernode_runtime.bootseq import BootOptions, BootResult, run_boot  # noqa: E402
from supernode_runtime.config import EffectiveConfig  # noqa: E402
from supernode_runtime.context_parser import format_context  # noqa: E402
from supernode_runtime.paths import Paths  # noqa: E402

# A real self-signed EC P-256 CA certificate (public; its key was thrown away), valid
# until 2126: FL_SUPERLINK_CA_CERT is parsed as X.509 for real.
PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBpjCCAU2gAwIBAgIUauR72+XC+HfLYMf65NKiaflnCOswCgYIKoZIzj0EAwIw\n"
    "KDEmMCQGA1UEAwwdRmxvd2VyIGFwcGxpYW5jZSB1bml0LXRlc3QgQ0EwIBcNMjYx\n"
    "MjAxMTk0ODI0WhgPMjEyNjExMDcxOTQ4MjRaMCgxJjAkBgNVBAMMHUZsb3dlciBh\n"
    "cHBsaWFuY2UgdW5pdC10ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
    "lqWfW8PMIG3OvWDRcNIYWutA9Vxnl6zjP5yB8rPrk6XtOcQSNS0zA1E3020M5STI\n"
    "SOdKN+6spxQOMfwvTgu7SaNTMFEwHQYDVR0OBBYEFDr/IHAHDEbzNWcPfROa8rL0\n"
    "/0t0MB8GA1UdIwQYMBaAFDr/IHAHDEbzNWcPfROa8rL0/0t0MA8GA1UdEwEB/wQF\n"
    "MAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgcCZVzHj6fVO0mifjWO3oyDkQAdY4Fz7P\n"
    "Pl8V2KKbwPwCIF2mI/QUdL8hVv1kZ0/b1D6/PfffcBFmkmAzLnJNz0h3\n"
    "-----END CERTIFICATE-----\n"
)
PEM_B64 = base64.b64encode(PEM.encode()).decode()

BUILD_INFO = {
    "supernode_image": "flwr-supernode:1.41.0",
    "flwr_version": "1.41.0",
    "variant": "gpu",
}

LSMOD_WITH_NVIDIA = (
    "Module                  Size  Used by\n"
    "nvidia_uvm           1540096  0\n"
    "nvidia              56717312  1 nvidia_uvm\n"
    "virtio_net             65536  0\n"
)
# What `nvidia-ctk cdi list` prints for one GPU with --device-name-strategy=index.
CDI_DEVICES_ONE_GPU = ("nvidia.com/gpu=0", "nvidia.com/gpu=all")
CDI_DEVICES_TWO_GPUS = ("nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all")

LSMOD_WITHOUT_NVIDIA = (
    "Module                  Size  Used by\n"
    "nvidia_uvm           1540096  0\n"
    "nouveau              2813952  0\n"
    "virtio_net             65536  0\n"
)


def pythonpath_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for running ``python -m supernode_runtime`` in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra or {})
    return env


class FakeBin:
    """A directory of fake programs that is the whole PATH."""

    def __init__(self, directory: Path, log: Path) -> None:
        self.dir = directory
        self.log = log

    def add(self, name: str, body: str) -> Path:
        """Write ``#!/bin/sh`` program ``name``; every call is appended to the log."""
        path = self.dir / name
        path.write_text(f'#!/bin/sh\n/bin/echo "{name} $*" >> "{self.log}"\n{body}\n')
        path.chmod(0o755)
        return path

    def add_output(self, name: str, stdout: str, code: int = 0) -> Path:
        data = self.dir / f".{name}.out"
        data.write_text(stdout)
        return self.add(name, f'/bin/cat "{data}"\nexit {code}')

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def docker(self, cdi: bool = True, nvidia_runtime: bool = True) -> None:
        """A docker whose ``info`` reports CDI spec directories (Docker >= 25 with the cdi
        feature) or none, and the nvidia runtime or not; any other call exits 0."""
        dirs = '["/etc/cdi","/var/run/cdi"]' if cdi else "[]"
        runtimes = (
            '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}'
            if nvidia_runtime
            else ('{"io.containerd.runc.v2":{"path":"runc"},"runc":{"path":"runc"}}')
        )
        self.add(
            "docker",
            f"case \"$*\" in\n  *CDISpecDirs*) /bin/echo '{dirs}' ;;\n"
            f"  *Runtimes*) /bin/echo '{runtimes}' ;;\nesac\nexit 0",
        )

    def nvidia_ctk(self, devices: tuple[str, ...] = CDI_DEVICES_ONE_GPU, generate_exit: int = 0) -> None:
        """An nvidia-ctk whose ``cdi generate --output=FILE`` writes FILE (or exits
        ``generate_exit``) and whose ``cdi list`` lists ``devices``, as the real one does
        (log line on stderr, one device name per line on stdout)."""
        listing = self.dir / ".nvidia-ctk.list"
        listing.write_text("".join(f"{d}\n" for d in devices))
        self.add(
            "nvidia-ctk",
            'if [ "$1 $2" = "cdi generate" ]; then\n'
            f"  [ {generate_exit} -eq 0 ] || "
            f"{{ /bin/echo 'ERROR: failed to initialize NVML' >&2; exit {generate_exit}; }}\n"
            '  for a in "$@"; do\n'
            '    case "$a" in --output=*) /bin/echo "cdiVersion: 0.5.0" > "${a#--output=}" ;; esac\n'
            "  done\n  exit 0\nfi\n"
            'if [ "$1 $2" = "cdi list" ]; then\n'
            f'  /bin/echo "INFO[0000] Found {len(devices)} CDI devices" >&2\n'
            f'  /bin/cat "{listing}"\n  exit 0\nfi\nexit 2',
        )

    def gpu_present(self, devices: tuple[str, ...] = CDI_DEVICES_ONE_GPU) -> None:
        """A GPU VM of the default images: driver, Docker with CDI, the toolkit's nvidia-ctk."""
        self.add_output("lsmod", LSMOD_WITH_NVIDIA)
        self.add_output("nvidia-smi", "| NVIDIA A100 |\n")
        self.docker()
        self.nvidia_ctk(devices)

    def gpu_toolkit_missing(self) -> None:
        """Driver and Docker with CDI, but no Container Toolkit (no nvidia-ctk, no runtime)."""
        self.gpu_present()
        (self.dir / "nvidia-ctk").unlink()
        self.docker(nvidia_runtime=False)

    def gpu_module_missing(self) -> None:
        self.add_output("lsmod", LSMOD_WITHOUT_NVIDIA)
        self.add_output("nvidia-smi", "| NVIDIA A100 |\n")

    def gpu_smi_failing(self) -> None:
        self.add_output("lsmod", LSMOD_WITH_NVIDIA)
        self.add(
            "nvidia-smi",
            '/bin/echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver" >&2\nexit 9',
        )


@dataclass
class FakeRoot:
    """A fake guest filesystem: context files, build.json, Paths, boot runner."""

    paths: Paths
    out: io.StringIO = field(default_factory=io.StringIO)

    @property
    def context_dir(self) -> Path:
        return self.paths.premounted_context_dirs[0]

    def write_context(
        self,
        values: Mapping[str, str],
        token: str | None = "tok-123",
        raw_text: str | None = None,
    ) -> Path:
        """Write context.sh (+ token.txt) where a mounted CONTEXT CD would be."""
        self.context_dir.mkdir(parents=True, exist_ok=True)
        path = self.context_dir / "context.sh"
        path.write_text(raw_text if raw_text is not None else format_context(values))
        if token is not None:
            (self.context_dir / "token.txt").write_text(token + "\n")
        return path

    def write_override(self, values: Mapping[str, str]) -> None:
        self.paths.override_file.parent.mkdir(parents=True, exist_ok=True)
        self.paths.override_file.write_text(format_context(values))

    def write_build_info(self, info: Mapping[str, Any] | None = None) -> None:
        self.paths.build_info.parent.mkdir(parents=True, exist_ok=True)
        self.paths.build_info.write_text(json.dumps(dict(info or BUILD_INFO)))

    def options(self, **kw: Any) -> BootOptions:
        base: dict[str, Any] = {
            "discovery_attempts": 1,
            "discovery_interval": 0.0,
            "onegate_timeout": 2.0,
            "sleep": lambda _s: None,
            "out": self.out,
        }
        base.update(kw)
        return BootOptions(**base)

    def boot(self, **kw: Any) -> BootResult:
        return run_boot(self.paths, self.options(**kw))

    def log(self) -> str:
        return self.out.getvalue()

    def spec(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.paths.launch_spec.read_text())
        return doc

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.paths.status_json.read_text())
        return doc


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class OneGateServer:
    """A local HTTP server standing in for OneGate."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.service: dict[str, Any] | None = None
        self.service_status = 200
        self.put_status = 200
        self.on_service: Callable[[int], dict[str, Any] | None] | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> Recorded:
                length = int(self.headers.get("Content-Length") or 0)
                rec = Recorded(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                server.requests.append(rec)
                return rec

            def _reply(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._record()
                if self.path != "/service":
                    self._reply(404, b"{}")
                    return
                doc = server.service
                if server.on_service is not None:
                    count = sum(1 for r in server.requests if r.path == "/service")
                    doc = server.on_service(count)
                self._reply(server.service_status, json.dumps(doc or {}).encode())

            def do_PUT(self) -> None:
                self._record()
                self._reply(server.put_status, b"", "text/plain")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def puts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PUT"]


def service_doc(superlink_template: Mapping[str, str], own_vmid: str = "42") -> dict[str, Any]:
    """A OneGate GET /service document with a superlink and a supernode role."""
    return {
        "SERVICE": {
            "id": "7",
            "name": "flower",
            "roles": [
                {
                    "name": "supernode",
                    "cardinality": 1,
                    "nodes": [
                        {
                            "deploy_id": 42,
                            "running": True,
                            "vm_info": {"VM": {"ID": own_vmid, "USER_TEMPLATE": {"READY": "YES"}}},
                        }
                    ],
                },
                {
                    "name": "superlink",
                    "cardinality": 1,
                    "nodes": [
                        {
                            "deploy_id": 40,
                            "running": True,
                            "vm_info": {"VM": {"ID": "40", "USER_TEMPLATE": dict(superlink_template)}},
                        }
                    ],
                },
            ],
        }
    }


# A valid configuration with every optional setting off: the launch tests vary it with dataclasses.replace.
BASE = EffectiveConfig(
    superlink_address="10.0.0.5:8000",
    node_config=None,
    isolation="subprocess",
    max_retries=None,
    max_wait_time=None,
    log_level="INFO",
    tls_enabled=False,
    ca_cert_pem=None,
    gpu_enabled=False,
    cuda_visible_devices="all",
    gpu_memory_fraction=0.8,
)
