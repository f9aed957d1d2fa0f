"""Imported at start-up by every Python process of the warm-launcher deployment test (PYTHONPATH).

In a *real* ``flwr-clientapp`` process (the console script; the warm launcher's children never run
site, the shim runs with ``-I -S``) it logs the start to $FL_TEST_REAL_LOG, sleeps
$FL_TEST_CLIENTAPP_DELAY seconds (a slow host: longer than flwr's 30 s claim window), then imports
what the console script imports (``flwr.supernode.cli``) and logs when that is done, i.e. when
``flwr_clientapp()`` is about to run.
"""

from __future__ import annotations

import os
import sys

if os.path.basename(sys.argv[0] if sys.argv else "") == "flwr-clientapp" and os.environ.get("FL_TEST_REAL_LOG"):
    import time

    from supernode_container.flwr_clientapp_shim import log_event, parse_executor_argv, process_start_time, task_id

    _options = parse_executor_argv(sys.argv[1:]) or {}
    _fields = {"task": task_id(sys.argv[1:]), "parent_pid": _options.get("parent_pid")}
    os.environ["FL_WARM_CLIENTAPP_LOG"] = os.environ["FL_TEST_REAL_LOG"]
    log_event("real-start", started=process_start_time(), **_fields)
    time.sleep(float(os.environ.get("FL_TEST_CLIENTAPP_DELAY") or 0))
    import flwr.supernode.cli  # noqa: F401  (what the console script imports first)

    log_event("real-entry", **_fields)
