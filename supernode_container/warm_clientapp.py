"""The warm ClientApp launcher: flwr's ClientApp runtime imported once, one forked child per task.

``python -m supernode_container.warm_clientapp --socket PATH`` (started and restarted by
:mod:`supernode_container.entrypoint`):

1. makes the process single-threaded before anything can load a BLAS (``OPENBLAS_NUM_THREADS=1``
   and friends: a thread pool does not survive ``fork``);
2. imports the target of flwr's ``flwr-clientapp`` console script (``flwr.supernode.cli:
   flwr_clientapp`` in flwr 1.41 and 1.42), and with it flwr's ClientApp runtime. Never the
   user's app (it arrives as a FAB with the task) and never a GPU framework: CUDA is initialised,
   if at all, in the child. The lightest path: ``flwr/supernode/cli/__init__.py`` also imports
   ``flower_supernode`` (sqlalchemy, alembic, ...), which a ClientApp never uses, so the module
   ``flwr/supernode/cli/flwr_clientapp.py`` is loaded on its own under its real name (the same
   function object the console script would call; a unit test checks this);
3. binds the Unix socket under a temporary name and renames it into place, so the socket exists
   only once the launcher is ready (until then the shim falls back at once);
4. for each task (see :mod:`supernode_container.flwr_clientapp_shim` for the protocol) forks a
   child that closes the launcher's descriptors, resets signal handlers and mask, joins the shim's
   process group, takes the shim's stdin/stdout/stderr, working directory and environment
   (the task's own, not the launcher's single-thread settings), sets ``sys.argv`` and calls
   ``flwr_clientapp()``, then reports its exit status and ``os._exit``s;
5. reaps every child (SIGCHLD through a wake-up fd) and sends each shim its child's status.

A child outlives a launcher that dies: it reports its own status to the shim.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from supernode_container.flwr_clientapp_shim import (
    EXIT,
    GO,
    HEADER,
    MAX_REQUEST,
    OFFER,
    PROGRAM,
    PROTOCOL,
    log_event,
    parse_executor_argv,
    task_fields,
    task_id,
)

# Set before flwr (and so numpy, grpc) is imported: the launcher must have no threads when it forks.
SINGLE_THREAD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "BLIS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}
CONSOLE_SCRIPT = PROGRAM
ENTRY_POINT = "flwr.supernode.cli:flwr_clientapp"  # flwr's entry_points.txt, 1.41.0 and 1.42.0
LIGHT_MODULE = "flwr.supernode.cli.flwr_clientapp"
FULL_CLI_MODULE = "flwr.supernode.cli.flower_supernode"  # what the light path avoids
HANDSHAKE_TIMEOUT = 5.0
EXIT_SETUP_FAILED = 70  # the child failed before running any ClientApp code (EX_SOFTWARE)
# modules whose presence in the launcher would mean a GPU framework was initialised before the fork
GPU_MODULES = ("torch", "tensorflow", "jax", "jaxlib", "cupy", "pycuda", "numba.cuda")


def console_script_target() -> str:
    """``module:function`` of flwr's ``flwr-clientapp`` console script, from its installed metadata."""
    for entry in importlib.metadata.entry_points(group="console_scripts", name=CONSOLE_SCRIPT):
        if entry.dist is None or entry.dist.name.lower() == "flwr":
            return str(entry.value)
    raise LookupError(f"flwr installs no {CONSOLE_SCRIPT} console script")


def _load_module_alone(name: str) -> ModuleType:
    """Import `name` without executing its parent package's ``__init__`` (the parent's parents are imported)."""
    parent, _, leaf = name.rpartition(".")
    parent_spec = importlib.util.find_spec(parent)
    if parent_spec is None or not parent_spec.submodule_search_locations:
        raise ImportError(f"{parent} is not a package")
    location = Path(next(iter(parent_spec.submodule_search_locations))) / f"{leaf}.py"
    spec = importlib.util.spec_from_file_location(name, location)
    if spec is None or spec.loader is None or not location.is_file():
        raise ImportError(f"no {location}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_entry(light: bool = True) -> tuple[Callable[[], object], str]:
    """flwr's ``flwr_clientapp`` and how it was loaded ("light" or "entry-point")."""
    target = console_script_target()
    if light and target == ENTRY_POINT and LIGHT_MODULE not in sys.modules and "flwr.supernode.cli" not in sys.modules:
        module = _load_module_alone(LIGHT_MODULE)
        return getattr(module, target.split(":")[1]), "light"
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj, "entry-point"


def load_named(target: str) -> Callable[[], object]:
    """A ``module:function`` given on the command line (tests run fake ClientApps this way)."""
    module_name, _, attr = target.partition(":")
    entry: Callable[[], object] = getattr(importlib.import_module(module_name), attr)
    return entry


def exit_code(value: object) -> int:
    """The process exit code of ``sys.exit(value)``."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


# -- the child -------------------------------------------------------------------------------------
def reset_signals() -> None:
    """Signal dispositions and mask as a fresh Python interpreter has them."""
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for ignored in ("SIGPIPE", "SIGXFSZ"):  # Python ignores these at start-up
        if hasattr(signal, ignored):
            signal.signal(getattr(signal, ignored), signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def adopt_task(request: dict[str, Any], fds: list[int]) -> None:
    """Become the task's process: its stdio, directory, environment, process group and argv."""
    for target, fd in enumerate(fds[:3]):
        if fd != target:
            os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    env = {str(k): str(v) for k, v in request["env"].items()}
    os.environ.clear()
    os.environ.update(env)
    with contextlib.suppress(OSError, KeyError, TypeError):
        os.setpgid(0, int(request["pgid"]))  # as if started by the shim's parent, like a stock process
    if env.get("PYTHONUNBUFFERED"):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(write_through=True)  # type: ignore[union-attr]
    sys.argv = [str(a) for a in request["argv"]]


def finish_interpreter() -> None:
    """What interpreter shutdown would do before exit: join non-daemon threads, atexit, flush."""
    shutdown = getattr(threading, "_shutdown", None)
    with contextlib.suppress(Exception):
        if shutdown is not None:
            shutdown()
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def run_child(
    conn: socket.socket, request: dict[str, Any], fds: list[int], entry: Callable[[], object], inherited: list[int]
) -> None:
    """The forked child: set up, ACK, run flwr_clientapp(), report, ``os._exit``. Never returns."""
    try:
        reset_signals()
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        adopt_task(request, fds)
        conn.settimeout(None)
        conn.sendall(f"ACK {os.getpid()}\n".encode())
        log_event(
            "start", shim_pid=request.get("shim_pid"), shim_started=request.get("started"), **task_fields(sys.argv[1:])
        )
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
        os._exit(EXIT_SETUP_FAILED)
    status = 0
    try:
        status = exit_code(entry())
    except SystemExit as exc:
        status = exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        status = -signal.SIGINT  # a stock interpreter re-raises SIGINT on an uncaught KeyboardInterrupt
    except BaseException:
        traceback.print_exc()
        status = 1
    finish_interpreter()
    with contextlib.suppress(OSError):
        conn.sendall(EXIT + f" {status}\n".encode())
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)


# -- the launcher ----------------------------------------------------------------------------------
@dataclass
class Child:
    conn: socket.socket
    task: str
    forked_at: float


class BadRequest(Exception):
    pass


def receive_request(conn: socket.socket) -> dict[str, Any]:
    """The shim's request (length-prefixed JSON), checked."""
    header = b""
    while len(header) < HEADER.size:
        chunk = conn.recv(HEADER.size - len(header))
        if not chunk:
            raise BadRequest("request cut short")
        header += chunk
    (size,) = HEADER.unpack(header)
    if size > MAX_REQUEST:
        raise BadRequest(f"request of {size} bytes")
    body = b""
    while len(body) < size:
        chunk = conn.recv(min(65536, size - len(body)))
        if not chunk:
            raise BadRequest("request cut short")
        body += chunk
    request = json.loads(body)
    if not isinstance(request, dict) or request.get("protocol") != PROTOCOL:
        raise BadRequest("unknown protocol")
    argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise BadRequest("no argv")
    if parse_executor_argv(argv[1:]) is None:
        raise BadRequest("argv is not the SubprocessExecutor form")
    if not isinstance(env, dict) or not isinstance(cwd, str):
        raise BadRequest("no environment or directory")
    return request


def receive_go(conn: socket.socket) -> list[int] | None:
    """The shim's GO with its stdin, stdout, stderr; None (descriptors closed) for anything else."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 64, 3)
    if data == GO + b"\n" and len(fds) == 3:
        return list(fds)
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    return None


class Launcher:
    def __init__(self, path: Path, entry: Callable[[], object]) -> None:
        self.path = path
        self.entry = entry
        self.children: dict[int, Child] = {}
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.inode: int | None = None

    def bind(self) -> None:
        """Listen under a temporary name, then rename into place: the path appears only when ready."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        self.listener.bind(str(temporary))
        os.chmod(temporary, 0o600)
        self.listener.listen(64)
        self.inode = temporary.stat().st_ino
        os.replace(temporary, self.path)

    def install_signals(self) -> None:
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._stop)

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def serve(self) -> None:
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        while not self.stopping:
            for key, _ in self.selector.select(timeout=1.0):
                if key.fileobj is self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while self.wake_r.recv(4096):
                            pass
                elif not self.stopping:
                    self.accept()
            self.reap()
        self.close()

    def accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        try:
            self.handle(conn)
        except (OSError, BadRequest, ValueError) as exc:
            with contextlib.suppress(OSError):
                conn.sendall(f"FAIL {type(exc).__name__}\n".encode())
            conn.close()
            print(f"warm-clientapp: task refused: {exc}", file=sys.stderr, flush=True)

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(HANDSHAKE_TIMEOUT)
        request = receive_request(conn)
        conn.sendall(OFFER + b"\n")
        fds = receive_go(conn)
        if fds is None:
            conn.close()  # the shim gave up (and fell back) before it got our OFFER
            return
        try:
            self.fork(conn, request, fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def inherited_fds(self, conn: socket.socket) -> list[int]:
        """Descriptors of the launcher a child must not keep (its own connection excepted)."""
        fds = [self.listener.fileno(), self.wake_r.fileno(), self.wake_w.fileno()]
        fds += [child.conn.fileno() for child in self.children.values()]
        with contextlib.suppress(Exception):
            fds.append(self.selector.fileno())
        return [fd for fd in fds if fd >= 0 and fd != conn.fileno()]

    def fork(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # else the child would write the launcher's buffered output again
        inherited = self.inherited_fds(conn)
        pid = os.fork()
        if pid == 0:
            run_child(conn, request, fds, self.entry, inherited)
        task = task_id(request["argv"][1:])
        self.children[pid] = Child(conn, task, time.time())
        log_event("fork", child=pid, task=task, shim_pid=request.get("shim_pid"))
        print(f"warm-clientapp: task {task} -> child {pid}", file=sys.stderr, flush=True)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            child = self.children.pop(pid, None)
            if child is None:
                continue
            with contextlib.suppress(OSError):
                child.conn.sendall(EXIT + f" {code}\n".encode())
            child.conn.close()
            log_event("exit", child=pid, task=child.task, status=code, seconds=round(time.time() - child.forked_at, 3))

    def close(self) -> None:
        """Stop listening (running children go on and report to their shims themselves)."""
        with contextlib.suppress(OSError):
            if self.inode is not None and self.path.stat().st_ino == self.inode:
                self.path.unlink()
        self.listener.close()
        for child in self.children.values():
            child.conn.close()


def gpu_modules_loaded() -> list[str]:
    return [name for name in GPU_MODULES if name in sys.modules]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="warm-clientapp", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, type=Path, help="the Unix socket to listen on")
    parser.add_argument("--entry", help="module:function to run instead of flwr's flwr_clientapp (tests)")
    parser.add_argument("--full-import", action="store_true", help="import the console script's module as is")
    args = parser.parse_args(argv)
    os.environ.update(SINGLE_THREAD_ENV)
    started = time.monotonic()
    if args.entry:
        entry, how = load_named(args.entry), "named"
    else:
        entry, how = load_entry(light=not args.full_import)
    loaded = gpu_modules_loaded()
    if loaded:  # never fork a process with a GPU framework in it: the shims fall back instead
        print(f"warm-clientapp: refusing to serve, {loaded} imported before the fork", file=sys.stderr)
        return 1
    launcher = Launcher(args.socket, entry)
    launcher.install_signals()
    launcher.bind()
    seconds = time.monotonic() - started
    log_event(
        "ready",
        how=how,
        modules=len(sys.modules),
        import_seconds=round(seconds, 3),
        gpu_modules=gpu_modules_loaded(),
        flower_supernode=FULL_CLI_MODULE in sys.modules,
    )
    print(
        f"warm-clientapp: ready on {args.socket} ({how} import of {len(sys.modules)} modules in {seconds:.2f} s)",
        file=sys.stderr,
        flush=True,
    )
    launcher.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
