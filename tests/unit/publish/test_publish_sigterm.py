"""A SIGTERM (a cancelled CI job) during publishing runs its clean-up, as Ctrl-C does: a real
`python -m appliance_build.publish publish` is stopped while it checksums the bundled file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable

from publish_testlib import URL_PREFIX, FakeBuild

from appliance_build.paths import REPO

# the publish command line, with the checksum of the bundled qcow2 (the step after the partial
# bundle exists) replaced by one that says so and waits: the signal arrives mid-publish
PROGRAM = textwrap.dedent("""
    import sys, time
    from appliance_build.publish import bundle, cli

    def slow_digests(path):
        print("checksumming", flush=True)
        time.sleep(120)

    bundle.digests = slow_digests
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_sigterm_during_publish_leaves_no_partial_bundle(fake_build: Callable[[str], FakeBuild]) -> None:
    build = fake_build("cpu").tested_and_recorded()
    argv = ["publish", build.name, "--url-prefix", URL_PREFIX, "--build-root", str(build.root)]
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "checksumming", proc.communicate()
        assert list(build.tree.publish.glob(f".{build.name}.partial-*")), "the partial bundle exists mid-publish"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted: no partial bundle left" in err and "Traceback" not in err
    assert list(build.tree.publish.iterdir()) == []  # neither the partial nor a final bundle
    assert build.qcow2.is_file() and build.tested_record.is_file()  # the build itself untouched
