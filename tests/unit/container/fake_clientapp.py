"""A stand-in for flwr's ``flwr_clientapp()`` for the launcher's unit tests (no flwr import).

The token of the executor's command line says what to do: ``exit-N`` exits with N, ``sleep-S``
sleeps S seconds (then exits 0), ``segv`` kills itself with SIGSEGV, ``raise`` raises, ``print``
writes what it sees (argv, environment, signal state) as JSON to stdout; ``term`` waits for SIGTERM
and exits 143 from the handler.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime-api-address")
    parser.add_argument("--token")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates")
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--allow-runtime-dependency-installation", action="store_true")
    token = parser.parse_args().token
    mode = "real" if os.environ.get("FAKE_REAL") else "warm"
    print(
        json.dumps(
            {
                "mode": mode,
                "pid": os.getpid(),
                "argv": sys.argv,
                "cwd": os.getcwd(),
                "task_var": os.environ.get("TASK_VAR"),
                "blas": os.environ.get("OPENBLAS_NUM_THREADS"),
                "sigint": str(signal.getsignal(signal.SIGINT)),
                "sigterm": str(signal.getsignal(signal.SIGTERM)),
                "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
                "pgid": os.getpgid(0),
            }
        ),
        flush=True,
    )
    print(f"stderr of {token}", file=sys.stderr, flush=True)
    if token.startswith("exit-"):
        sys.exit(int(token.removeprefix("exit-")))
    if token.startswith("sleep-"):
        time.sleep(float(token.removeprefix("sleep-")))
    elif token == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif token == "raise":
        raise RuntimeError("the fake ClientApp failed")
    elif token == "term":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        print("waiting for SIGTERM", flush=True)
        time.sleep(60)
        sys.exit(3)  # no signal came


def real() -> None:
    """The fake *real* flwr-clientapp (the shim's fallback)."""
    os.environ["FAKE_REAL"] = "1"
    main()
