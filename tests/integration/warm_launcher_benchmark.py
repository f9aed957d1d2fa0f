"""Measure the warm ClientApp launcher against stock flwr on the local deployment (one run each).

``.nox/tests/bin/python tests/integration/warm_launcher_benchmark.py [--rounds N] [--out PATH]``

No slow-down here (``FL_TEST_CLIENTAPP_DELAY=0``): stock and warm both complete, and per task we
record the start-up cost that the claim window has to absorb: from the ``flwr-clientapp`` process's
exec (the shim's, warm; the real program's, stock) to the moment ``flwr_clientapp()`` is called
(warm: the forked child; stock: after the console script's imports). Also the per-round wall
time from the ServerApp's results, and the idle launcher's memory (/proc/PID/smaps_rollup before
the first task). Writes build/measurements/warm-launcher.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]

from warm_launcher_deploy import Outcome, deploy  # noqa: E402

from appliance_build.artifacts import BuildTree  # noqa: E402


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "median": round(statistics.median(values), 4), "max": max(values)}


def measure(outcome: Outcome, warm: bool) -> dict[str, Any]:
    starts = outcome.launches.warm_start_seconds() if warm else outcome.launches.stock_start_seconds()
    return {
        "status": outcome.status,
        "run_seconds": outcome.seconds,
        "rounds_completed": outcome.completed_rounds,
        "launch_to_flwr_clientapp_s": summary(starts),
        "round_s": summary(outcome.round_seconds()),
        "launches": len(outcome.launches.of("shim") if warm else outcome.launches.of("real-start")),
        "launcher_idle_memory_kib": outcome.launcher_memory,
        "problems": outcome.problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=BuildTree.default().measurements / "warm-launcher.json")
    args = parser.parse_args()
    doc: dict[str, Any] = {
        "flwr": version("flwr"),
        "python": platform.python_version(),
        "rounds": args.rounds,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with tempfile.TemporaryDirectory(prefix="warm-launcher-bench-") as scratch:
        for label, warm in (("stock", False), ("warm", True)):
            outcome = deploy(
                Path(scratch) / label, warm=warm, delay=0.0, rounds=args.rounds, round_timeout=120.0, run_timeout=300.0
            )
            doc[label] = measure(outcome, warm)
    stock, warm_ = doc["stock"]["launch_to_flwr_clientapp_s"], doc["warm"]["launch_to_flwr_clientapp_s"]
    if stock.get("n") and warm_.get("n"):
        doc["ratio_stock_over_warm_launch_median"] = round(stock["median"] / warm_["median"], 1)
    if doc["stock"]["round_s"].get("n") and doc["warm"]["round_s"].get("n"):
        doc["ratio_stock_over_warm_round_median"] = round(
            doc["stock"]["round_s"]["median"] / doc["warm"]["round_s"]["median"], 2
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
