"""The runner's command line, the flwr CLI glue and the node contexts (no processes, no VMs)."""

from __future__ import annotations

import base64
import json
import tomllib
from pathlib import Path

import pytest

from appliance_build.artifacts import ImageArtifacts, ManifestError
from e2e import flwr_cli, nodes, runner, tls
from tests.fixtures.manifests import sample_manifest


def test_defaults() -> None:
    args = runner.parse_args([])
    assert (args.image, args.faults, args.rounds, args.nodes) == ("supernode-cpu", False, 3, "vm")
    assert (args.vm_memory, args.vm_cpus, args.bad_tls) == (1536, 1, "empty-ca")
    assert not args.connect_only and not args.no_superlink_db
    assert runner.selected_scenarios(args) == ["baseline"]
    assert (args.ready_timeout, args.connect_timeout, args.round_timeout, args.run_timeout) == (900, 600, 600, 2400)


def test_default_timeouts_let_the_serverapp_fail_a_run_first() -> None:
    """A run stuck in its first phase ends by the ServerApp's own RoundIncomplete (after the wait for nodes and
    one round timeout), before the runner's run timeout stops it."""
    assert runner.RUN_TIMEOUT_S > runner.CONNECT_TIMEOUT_S + runner.ROUND_TIMEOUT_S


def test_faults_and_options() -> None:
    args = runner.parse_args(
        [
            "--image",
            "supernode-gpu",
            "--faults",
            "--rounds",
            "5",
            "--nodes",
            "local",
            "--vm-memory",
            "2048",
            "--bad-tls",
            "wrong-ca",
            "--run-timeout",
            "60",
        ]
    )
    assert (args.image, args.rounds, args.nodes, args.vm_memory, args.bad_tls) == (
        "supernode-gpu",
        5,
        "local",
        2048,
        "wrong-ca",
    )
    assert args.run_timeout == 60.0
    assert runner.selected_scenarios(args) == ["baseline", "superlink-restart", "superlink-late", "bad-tls"]


def test_scenario_selection() -> None:
    assert runner.selected_scenarios(runner.parse_args(["--scenario", "bad-tls"])) == ["bad-tls"]
    restart = runner.parse_args(["--scenario", "superlink-restart"])
    assert runner.selected_scenarios(restart) == ["baseline", "superlink-restart"]  # it runs on the baseline VMs


@pytest.mark.parametrize(
    "argv",
    [
        ["--rounds", "1"],
        ["--rounds", "0"],
        ["--rounds", "x"],
        ["--nodes", "docker"],
        ["--vm-cpus", "0"],
        ["--run-timeout", "-5"],
        ["--bad-tls", "none"],
        ["--scenario", "nope"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        runner.parse_args(argv)
    assert exc.value.code == 2


def test_missing_image_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOWER_BUILD_DIR", str(tmp_path))
    assert runner.main(["--image", "supernode-cpu"]) == 2
    assert "build it first" in capsys.readouterr().err


@pytest.mark.parametrize(("variant", "firmware", "machine"), [("cpu", "bios", "pc"), ("gpu", "uefi", "q35")])
def test_image_paths_from_manifest(variant: str, firmware: str, machine: str) -> None:
    name = f"supernode-{variant}"
    image = ImageArtifacts.for_image(name)
    image.root.mkdir(parents=True)
    image.qcow2.write_bytes(b"")
    sample_manifest(name, variant).write(image.manifest)
    assert runner.image_paths(name) == (image.qcow2, firmware, machine)


def test_image_paths_refuses_a_manifest_without_firmware() -> None:
    """No default firmware: a manifest that does not say is refused, naming the field."""
    image = ImageArtifacts.for_image("supernode-cpu")
    image.root.mkdir(parents=True)
    image.qcow2.write_bytes(b"")
    doc = sample_manifest().as_dict()
    del doc["builder"]["firmware"]
    image.manifest.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"manifest\.json: builder\.firmware: required field missing"):
        runner.image_paths("supernode-cpu")
    assert runner.main(["--image", "supernode-cpu"]) == 2


def test_prepare_out_keeps_the_previous_run(tmp_path: Path) -> None:
    out = tmp_path / "e2e"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    runner.prepare_out(out)
    assert out.is_dir() and not any(out.iterdir())
    assert (tmp_path / "e2e.previous" / "summary.json").exists()


def test_connection_toml_for_tls_and_insecure(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    doc = tomllib.loads(flwr_cli.connection_toml("e2e", "127.0.0.1:9999", ca))
    connection = {"address": "127.0.0.1:9999", "root-certificates": str(ca.resolve())}
    assert doc == {"superlink": {"default": "e2e", "e2e": connection}}
    insecure = tomllib.loads(flwr_cli.connection_toml("x", "127.0.0.1:1", None))
    assert insecure["superlink"]["x"] == {"address": "127.0.0.1:1", "insecure": True}


def test_run_config_toml_round_trips() -> None:
    values = {"num-server-rounds": 3, "learning-rate": 0.05, "results-path": '/tmp/a "b"/r.json', "flag": True}
    assert tomllib.loads(flwr_cli.run_config_toml(values)) == values
    with pytest.raises(TypeError):
        flwr_cli.toml_value(None)


def test_parse_flwr_json_output() -> None:
    text = (
        'Using SuperLink: e2e (127.0.0.1:1)\n{"success": true, "nodes": ['
        '{"node-id": "2", "status": "online"}, {"node-id": "1", "status": "online"},'
        '{"node-id": "3", "status": "offline"}]}'
    )
    doc = flwr_cli.parse_json_output(text)
    assert flwr_cli.online_node_ids(doc) == ["1", "2"]
    with pytest.raises(flwr_cli.FlwrError):
        flwr_cli.parse_json_output("Error: connection refused")
    runs = {"runs": [{"run-id": "42", "status": "finished:completed"}]}
    assert flwr_cli.run_status(runs, 42) == "finished:completed"
    with pytest.raises(flwr_cli.FlwrError):
        flwr_cli.run_status(runs, 7)


def test_run_started_pattern() -> None:
    found = flwr_cli.RUN_STARTED.search("Using SuperLink\nSuccessfully started run 2988286066562664951\n")
    assert found and int(found.group(1)) == 2988286066562664951


def test_node_specs_and_contexts(tmp_path: Path) -> None:
    specs = nodes.node_specs(2, bad_tls="empty-ca")
    assert [(s.name, s.partition_id, s.tls) for s in specs] == [("node-0", 0, "good"), ("node-1", 1, "empty-ca")]
    assert specs[0].node_config == "partition-id=0 num-partitions=2"
    material = tls.create(tmp_path / "tls")
    good = nodes.appliance_context(specs[0], "10.0.2.2:4242", material, None)
    assert good == {
        "ONEAPP_FL_SUPERLINK_ADDRESS": "10.0.2.2:4242",
        "ONEAPP_FL_NODE_CONFIG": "partition-id=0 num-partitions=2",
        "ONEAPP_FL_TLS_ENABLED": "YES",
        "ONEAPP_FL_LOG_LEVEL": "INFO",
        "ONEAPP_FL_SUPERLINK_CA_CERT": material.ca_base64(),
    }
    assert nodes.appliance_context(specs[1], "10.0.2.2:4242", material, None)["ONEAPP_FL_SUPERLINK_CA_CERT"] == ""
    other = tls.create_unrelated_ca(tmp_path / "other.pem")
    wrong = nodes.appliance_context(nodes.NodeSpec("n", 1, 2, "wrong-ca"), "10.0.2.2:1", material, other)
    assert base64.b64decode(wrong["ONEAPP_FL_SUPERLINK_CA_CERT"]) == other.read_bytes()
    with pytest.raises(ValueError):
        nodes.NodeSpec("n", 0, 1, "sometimes")


def test_contexts_pass_the_appliance_validation(tmp_path: Path) -> None:
    """The good context is accepted by the appliance's own checks; the empty-CA one is refused."""
    from supernode_runtime import config as runtime_config

    material = tls.create(tmp_path)
    good, bad = nodes.node_specs(2, bad_tls="empty-ca")
    ok = runtime_config.resolve([("context", nodes.appliance_context(good, "10.0.2.2:4242", material, None))])
    assert ok.errors == [] and ok.config is not None
    assert ok.config.tls_enabled and ok.config.superlink_address == "10.0.2.2:4242"
    refused = runtime_config.resolve([("context", nodes.appliance_context(bad, "10.0.2.2:4242", material, None))])
    assert any("FL_SUPERLINK_CA_CERT" in e.variable for e in refused.errors)


def test_local_node_argv(tmp_path: Path) -> None:
    material = tls.create(tmp_path)
    group = nodes.LocalNodes(
        nodes.node_specs(2, bad_tls="empty-ca"), workdir=tmp_path, superlink_address="127.0.0.1:5", tls=material
    )
    argv = group.argv(group.specs[0])
    assert argv is not None
    # the CA as the appliance writes it from FL_SUPERLINK_CA_CERT (decoded, re-encoded as PEM)
    ca = Path(argv[argv.index("--root-certificates") + 1])
    assert ca == tmp_path / "node-0" / "ca.pem"
    assert ca.read_text().strip() == material.ca_cert.read_text().strip()
    assert argv[argv.index("--superlink") + 1] == "127.0.0.1:5"
    assert argv[argv.index("--node-config") + 1] == "partition-id=0 num-partitions=2"
    assert argv[argv.index("--isolation") + 1] == "subprocess"
    assert int(argv[argv.index("--port") + 1]) > 0  # two local nodes share one network namespace
    assert "--insecure" not in argv
    assert group.argv(group.specs[1]) is None  # the appliance would not start it either
    refused = group.resolve(group.specs[1])
    assert isinstance(refused, str) and "FL_SUPERLINK_CA_CERT" in refused


def test_local_node_environment_is_the_containers(tmp_path: Path) -> None:
    """The runtime's `docker run -e` items become the local SuperNode's environment."""
    from supernode_runtime import config as runtime_config
    from supernode_runtime import launch

    material = tls.create(tmp_path)
    group = nodes.LocalNodes(nodes.node_specs(1), workdir=tmp_path, superlink_address="127.0.0.1:5", tls=material)
    resolved = group.resolve(group.specs[0])
    assert not isinstance(resolved, str)
    env = resolved[1]
    assert env["FL_WARM_CLIENTAPP"] == "YES" and env["FLWR_LOG_LEVEL"] == "INFO"
    for item in launch.QUIET_ENV:
        key, _, value = item.partition("=")
        assert env[key] == value
    # the same as the appliance's `docker run` gives its container, and the same options after the image
    config = runtime_config.resolve(
        [("context", nodes.appliance_context(group.specs[0], "127.0.0.1:5", material, None))]
    ).config
    assert config is not None
    docker = launch.docker_run_argv(config, None, launch.BuildInfo("img:1", "1.41.0", "cpu"))
    items = [docker[i + 1] for i, flag in enumerate(docker) if flag == "-e"]
    assert env == {name: value for name, _, value in (item.partition("=") for item in items)}
    options = resolved[0][: resolved[0].index("--port")]
    ca = str(tmp_path / "node-0" / "ca.pem")
    assert options == [ca if item == launch.CONTAINER_CA_PATH else item for item in docker[docker.index("img:1") + 1 :]]


def test_launch_log_command_reads_the_containers_private_directory() -> None:
    from supernode_runtime import launch

    assert nodes.LAUNCH_LOG.startswith(f"docker exec {launch.CONTAINER_NAME} sh -c ")
    assert "'cat /tmp/flwr-warm-clientapp-*/launches.jsonl'" in nodes.LAUNCH_LOG


def test_results_finished(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    assert not flwr_cli.results_finished(path)
    path.write_text('{"status": "running"')
    assert not flwr_cli.results_finished(path)
    for status, done in (("running", False), ("completed", True), ("failed", True)):
        path.write_text(json.dumps({"status": status}))
        assert flwr_cli.results_finished(path) is done


def test_reconnection_line_of_a_supernode_log() -> None:
    from e2e.scenarios import RECONNECTED

    log = (
        "WARNING :   Connection attempt failed, retrying in 0.42 seconds\n"
        "INFO :      Connection successful after 13.85 seconds and 6 tries.\n"
    )
    assert RECONNECTED.findall(log) == ["13.85"]
