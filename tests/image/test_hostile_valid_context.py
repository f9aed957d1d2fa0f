"""Scenario "hostile-valid-context": a *valid* context whose values carry shell syntax.

test_bad_context sends invalid values, so the SuperNode never starts and "nothing
ran" cannot fail there. Here every value is accepted: the SuperNode container
must start with the node config handed to flower-supernode byte for byte, as one
argument, and none of the embedded commands may run - neither in the guest nor
in the container. The CA check (FL_SUPERLINK_CA_CERT parsed as X.509) is run in
the guest too, with the image's own python3 and the runtime's check-context.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import guest
import pytest
from guest import Host

from appliance_build.vm import appliance

pytestmark = pytest.mark.vm

NODE_CONFIG = (
    "partition-id=0 cmd=\"$(touch /tmp/pwned-subst)\" tick='`touch /tmp/pwned-backtick`' "
    "semi=\"x; touch /tmp/pwned-semicolon\" pipe='| touch /tmp/pwned-pipe && reboot' "
    'opt="--insecure --superlink=evil:1"'
)
CONTEXT_EXTRA = {
    "ONEAPP_FL_NODE_CONFIG": NODE_CONFIG,
    "ONEAPP_FL_LOG_LEVEL": "debug",
    # not ours: read by nobody, must not run either (cloud-init's datasource parses context.sh too)
    "NOTE": "$(touch /tmp/pwned-note) `touch /tmp/pwned-note2`; touch /tmp/pwned-note3",
}
# / without crossing mounts, plus the usual separate ones (a tmpfs /tmp, /run)
FIND_PWNED = "find / /tmp /var/tmp /run /root -xdev -name 'pwned*' 2>/dev/null | wc -l"
WRITE_TLS_CONTEXTS = r"""python3 - <<'PY'
import base64
pem = open("/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt").read()
key = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n"
for name, text in (("ok", pem), ("key", key + pem)):
    value = base64.b64encode(text.encode()).decode()
    with open(f"/tmp/tls-{name}.sh", "w") as out:
        out.write(f"FL_SUPERLINK_ADDRESS='10.0.0.5'\nFL_TLS_ENABLED='YES'\nFL_SUPERLINK_CA_CERT='{value}'\n")
PY"""


@pytest.fixture(scope="module")
def booted(boot_scenario: Any, superlink: Any) -> Iterator[appliance.BootedAppliance]:
    context = {"ONEAPP_FL_SUPERLINK_ADDRESS": superlink.guest_address, **CONTEXT_EXTRA}
    with boot_scenario("hostile-valid-context", context) as vm:
        yield vm


@pytest.fixture(scope="module")
def host(booted: appliance.BootedAppliance) -> Iterator[Host]:
    with guest.connect(booted) as host:
        yield host


def test_values_accepted_and_supernode_started(host: Host) -> None:
    doc = guest.status(host)
    assert doc["errors"] == [], doc["errors"]
    assert doc["supernode_will_start"] is True
    assert doc["config"]["FL_NODE_CONFIG"]["value"] == NODE_CONFIG
    assert host.service("flower-supernode").is_running


def test_flower_supernode_received_the_node_config_verbatim(host: Host, superlink: Any) -> None:
    args = guest.container_args(host)  # what Docker passed to the container's entrypoint
    assert args.count("--node-config") == 1
    assert args[args.index("--node-config") + 1] == NODE_CONFIG
    assert args.count("--superlink") == 1 and args[args.index("--superlink") + 1] == superlink.guest_address
    assert "--insecure" in args  # TLS off in this scenario: the one the runtime put there
    assert args.count("--insecure") == 1
    spec = json.loads(host.file("/run/flower/supernode.json").content_string)
    assert spec["argv"][spec["argv"].index("--node-config") + 1] == NODE_CONFIG


def test_flower_supernode_parsed_it_and_keeps_running(host: Host) -> None:
    time.sleep(20)  # flwr parses --node-config at start-up; a bad one exits at once
    assert guest.inspect(host, ".State.Running") is True
    assert host.service("flower-supernode").systemd_properties["NRestarts"] == "0"
    logs = guest.container_logs(host)
    assert "Traceback" not in logs
    assert "invalid format" not in logs


def test_nothing_ran_in_the_guest_or_the_container(host: Host) -> None:
    assert host.run(FIND_PWNED).stdout.strip() == "0"
    inside = host.run("docker exec flower-supernode sh -c %s", FIND_PWNED)
    assert inside.rc == 0 and inside.stdout.strip() == "0", inside.stderr
    assert guest.system_state(host) in ("running", "degraded")


def test_ca_certificates_are_parsed_for_real_in_the_image(host: Host) -> None:
    """check-context is the boot's own code: a real CA passes, a private key is refused."""
    route = host.run("python3 -c 'import cryptography.x509'").rc == 0 or host.run("openssl version").rc == 0
    assert route, "neither python3-cryptography nor openssl in the image: every TLS context would be refused"
    assert host.run(WRITE_TLS_CONTEXTS).rc == 0
    good = host.run("flower-appliance check-context /tmp/tls-ok.sh")
    assert good.rc == 0, good.stdout + good.stderr
    assert json.loads(good.stdout)["ok"] is True
    bad = host.run("flower-appliance check-context /tmp/tls-key.sh")
    assert bad.rc == 2
    assert "PRIVATE KEY" in json.loads(bad.stdout)["errors"][0]["reason"]
    assert "MIGH" not in bad.stdout + bad.stderr
