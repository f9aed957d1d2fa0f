"""Every variable's valid and invalid forms, defaults and ONEAPP_ precedence."""

from __future__ import annotations

from typing import Any

import pytest
from runtime_testlib import PEM, PEM_B64

from supernode_runtime.config import Resolution, resolve
from supernode_runtime.variables import BY_NAME, VARIABLES, lookup


def resolve_one(name: str, value: str, **others: str) -> Resolution:
    return resolve([("ctx", {name: value, **others})])


VALID: list[tuple[str, str, Any]] = [
    ("FL_SUPERLINK_ADDRESS", "10.0.0.5:8000", "10.0.0.5:8000"),
    ("FL_SUPERLINK_ADDRESS", "10.0.0.5", "10.0.0.5:8000"),
    ("FL_SUPERLINK_ADDRESS", "superlink.example.org:9092", "superlink.example.org:9092"),
    ("FL_SUPERLINK_ADDRESS", "SuperLink.Example.org", "superlink.example.org:8000"),
    ("FL_SUPERLINK_ADDRESS", "localhost:1", "localhost:1"),
    ("FL_SUPERLINK_ADDRESS", "[fd00::1]:65535", "[fd00::1]:65535"),
    ("FL_SUPERLINK_ADDRESS", "[FD00:0::1]", "[fd00::1]:8000"),
    ("FL_SUPERLINK_ADDRESS", "  10.0.0.5:08000 ", "10.0.0.5:8000"),
    ("FL_NODE_CONFIG", "partition-id=0 num-partitions=10", "partition-id=0 num-partitions=10"),
    ("FL_NODE_CONFIG", 'name="site a" lr=0.01 on=true', 'name="site a" lr=0.01 on=true'),
    ("FL_NODE_CONFIG", "path='/data/x y'", "path='/data/x y'"),
    ("FL_NODE_CONFIG", "a.b=1 a.c=-2", "a.b=1 a.c=-2"),
    ("FL_NODE_CONFIG", 'cmd="$(id); `x`"', 'cmd="$(id); `x`"'),
    ("FL_ISOLATION", "subprocess", "subprocess"),
    ("FL_ISOLATION", "PROCESS", "process"),
    ("FL_MAX_RETRIES", "0", 0),
    ("FL_MAX_RETRIES", "25", 25),
    ("FL_MAX_WAIT_TIME", "0", 0.0),
    ("FL_MAX_WAIT_TIME", "12.5", 12.5),
    ("FL_MAX_WAIT_TIME", "300", 300.0),
    ("FL_LOG_LEVEL", "debug", "DEBUG"),
    ("FL_LOG_LEVEL", "Critical", "CRITICAL"),
    ("FL_TLS_ENABLED", "no", False),
    ("FL_GPU_ENABLED", "YES", True),
    ("FL_GPU_ENABLED", "yes", True),
    ("FL_GPU_ENABLED", "No", False),
    ("FL_WARM_CLIENTAPP", "NO", False),
    ("FL_WARM_CLIENTAPP", "yes", True),
    ("FL_CUDA_VISIBLE_DEVICES", "all", "all"),
    ("FL_CUDA_VISIBLE_DEVICES", "ALL", "all"),
    ("FL_CUDA_VISIBLE_DEVICES", "0", "0"),
    ("FL_CUDA_VISIBLE_DEVICES", "0,1", "0,1"),
    ("FL_CUDA_VISIBLE_DEVICES", "0, 1 ,3", "0,1,3"),
    ("FL_GPU_MEMORY_FRACTION", "0.8", 0.8),
    ("FL_GPU_MEMORY_FRACTION", "1", 1.0),
    ("FL_GPU_MEMORY_FRACTION", ".25", 0.25),
]

INVALID: list[tuple[str, str]] = [
    ("FL_SUPERLINK_ADDRESS", "https://10.0.0.5:8000"),
    ("FL_SUPERLINK_ADDRESS", "10.0.0.5:0"),
    ("FL_SUPERLINK_ADDRESS", "10.0.0.5:65536"),
    ("FL_SUPERLINK_ADDRESS", "10.0.0.5:"),
    ("FL_SUPERLINK_ADDRESS", "10.0.0.5:80a"),
    ("FL_SUPERLINK_ADDRESS", "10.0.0.256:8000"),
    ("FL_SUPERLINK_ADDRESS", "fd00::1"),
    ("FL_SUPERLINK_ADDRESS", "[fd00::1"),
    ("FL_SUPERLINK_ADDRESS", "[fd00::zz]:8000"),
    ("FL_SUPERLINK_ADDRESS", "[fd00::1]8000"),
    ("FL_SUPERLINK_ADDRESS", "-bad-.example:8000"),
    ("FL_SUPERLINK_ADDRESS", "host name:8000"),
    ("FL_SUPERLINK_ADDRESS", "$(reboot):8000"),
    ("FL_SUPERLINK_ADDRESS", ":8000"),
    ("FL_NODE_CONFIG", "partition-id"),
    ("FL_NODE_CONFIG", "name=bareword"),
    ("FL_NODE_CONFIG", 'name="unterminated'),
    ("FL_NODE_CONFIG", "a=1 a=2"),
    ("FL_NODE_CONFIG", "a=[1,2]"),
    ("FL_NODE_CONFIG", "a=1979-05-27"),
    ("FL_NODE_CONFIG", 'a="x"y'),
    ("FL_NODE_CONFIG", "a=1\nb=2"),
    ("FL_NODE_CONFIG", "$(id)=1"),
    ("FL_NODE_CONFIG", "a=1; reboot"),
    ("FL_NODE_CONFIG", "--insecure=true"),
    ("FL_NODE_CONFIG", "a=1 -b=2"),
    ("FL_ISOLATION", "thread"),
    ("FL_ISOLATION", "subprocess;id"),
    ("FL_MAX_RETRIES", "-1"),
    ("FL_MAX_RETRIES", "1.5"),
    ("FL_MAX_RETRIES", "ten"),
    ("FL_MAX_RETRIES", "\u0661"),  # Arabic-Indic digit one: not ASCII
    ("FL_MAX_WAIT_TIME", "-3"),
    ("FL_MAX_WAIT_TIME", "inf"),
    ("FL_MAX_WAIT_TIME", "nan"),
    ("FL_MAX_WAIT_TIME", "1e3"),
    ("FL_LOG_LEVEL", "VERBOSE"),
    ("FL_LOG_LEVEL", "10"),
    ("FL_TLS_ENABLED", "true"),
    ("FL_TLS_ENABLED", "1"),
    ("FL_GPU_ENABLED", "Y"),
    ("FL_GPU_ENABLED", "on"),
    ("FL_GPU_ENABLED", "YES; reboot"),
    ("FL_WARM_CLIENTAPP", "off"),
    ("FL_WARM_CLIENTAPP", "NO$(id)"),
    ("FL_CUDA_VISIBLE_DEVICES", "-1"),
    ("FL_CUDA_VISIBLE_DEVICES", "0,,1"),
    ("FL_CUDA_VISIBLE_DEVICES", "0,1,"),
    ("FL_CUDA_VISIBLE_DEVICES", "gpu0"),
    ("FL_CUDA_VISIBLE_DEVICES", "0,0"),
    ("FL_CUDA_VISIBLE_DEVICES", "$(id)"),
    ("FL_GPU_MEMORY_FRACTION", "0"),
    ("FL_GPU_MEMORY_FRACTION", "0.0"),
    ("FL_GPU_MEMORY_FRACTION", "1.5"),
    ("FL_GPU_MEMORY_FRACTION", "-0.5"),
    ("FL_GPU_MEMORY_FRACTION", "80%"),
    ("FL_GPU_MEMORY_FRACTION", "nan"),
    ("FL_SUPERLINK_CA_CERT", "not base64 !!"),
    ("FL_SUPERLINK_CA_CERT", "aGVsbG8gd29ybGQ="),  # base64 of "hello world"
    ("FL_SUPERLINK_CA_CERT", "//79/A=="),  # not text
]


@pytest.mark.parametrize(("name", "raw", "expected"), VALID)
def test_valid_values(name: str, raw: str, expected: Any) -> None:
    res = resolve_one(name, raw)
    assert res.ok, res.errors
    assert res.settings[name].value == expected


@pytest.mark.parametrize(("name", "raw"), INVALID)
def test_invalid_values_name_the_variable_and_accepted_form(name: str, raw: str) -> None:
    res = resolve_one(name, raw)
    assert not res.ok
    assert res.config is None
    [err] = res.errors
    assert err.variable == name
    assert err.accepted == BY_NAME[name].accepted
    if not BY_NAME[name].secret:
        assert err.value == repr(raw.strip())[:60] or err.value.endswith("...")
    assert name in err.message()


def test_every_variable_has_valid_and_invalid_cases() -> None:
    valid_names = {n for n, _, _ in VALID} | {"FL_SUPERLINK_CA_CERT", "FL_TLS_ENABLED"}
    invalid_names = {n for n, _ in INVALID}
    assert valid_names == set(BY_NAME)
    assert invalid_names == set(BY_NAME)


def test_defaults_when_nothing_given() -> None:
    res = resolve([])
    assert res.ok
    cfg = res.config
    assert cfg is not None
    assert cfg.superlink_address is None
    assert cfg.node_config is None
    assert cfg.isolation == "subprocess"
    assert cfg.max_retries is None
    assert cfg.max_wait_time is None
    assert cfg.log_level == "INFO"
    assert cfg.tls_enabled is False
    assert cfg.ca_cert_pem is None
    assert cfg.gpu_enabled is False
    assert cfg.cuda_visible_devices == "all"
    assert cfg.gpu_memory_fraction == 0.8
    assert all(s.source == "default" for s in res.settings.values())


def test_empty_and_blank_values_mean_default() -> None:
    res = resolve([("ctx", {"FL_GPU_MEMORY_FRACTION": "", "ONEAPP_FL_LOG_LEVEL": "   "})])
    assert res.ok
    assert res.settings["FL_GPU_MEMORY_FRACTION"].value == 0.8
    assert res.settings["FL_LOG_LEVEL"].value == "INFO"


def test_oneapp_spelling_wins_over_plain() -> None:
    res = resolve([("ctx", {"FL_GPU_ENABLED": "NO", "ONEAPP_FL_GPU_ENABLED": "YES"})])
    assert res.settings["FL_GPU_ENABLED"].value is True
    assert res.settings["FL_GPU_ENABLED"].source.startswith("ONEAPP_FL_GPU_ENABLED")
    assert any("ONEAPP_FL_GPU_ENABLED is used" in w for w in res.warnings)


def test_plain_spelling_used_when_oneapp_empty() -> None:
    res = resolve([("ctx", {"ONEAPP_FL_SUPERLINK_ADDRESS": "", "FL_SUPERLINK_ADDRESS": "h:1"})])
    assert res.settings["FL_SUPERLINK_ADDRESS"].value == "h:1"


def test_error_names_the_spelling_that_was_used() -> None:
    res = resolve([("ctx", {"ONEAPP_FL_GPU_MEMORY_FRACTION": "2", "FL_GPU_MEMORY_FRACTION": "0.5"})])
    assert [e.variable for e in res.errors] == ["ONEAPP_FL_GPU_MEMORY_FRACTION"]


def test_override_layer_beats_cd_layer_even_against_oneapp() -> None:
    cd = ("cd", {"ONEAPP_FL_LOG_LEVEL": "DEBUG"})
    override = ("override", {"FL_LOG_LEVEL": "ERROR"})
    res = resolve([cd, override])
    assert res.settings["FL_LOG_LEVEL"].value == "ERROR"
    assert "override" in res.settings["FL_LOG_LEVEL"].source


def test_all_errors_are_collected_not_just_the_first() -> None:
    res = resolve([("ctx", {"FL_ISOLATION": "x", "FL_LOG_LEVEL": "y", "FL_GPU_ENABLED": "maybe"})])
    assert {e.variable for e in res.errors} == {"FL_ISOLATION", "FL_LOG_LEVEL", "FL_GPU_ENABLED"}


def test_tls_requires_ca_certificate() -> None:
    res = resolve([("ctx", {"ONEAPP_FL_TLS_ENABLED": "YES"})])
    [err] = res.errors
    assert err.variable == "FL_SUPERLINK_CA_CERT"
    assert "ONEAPP_FL_TLS_ENABLED=YES" in err.reason


def test_tls_with_ca_certificate_decodes_pem() -> None:
    res = resolve([("ctx", {"FL_TLS_ENABLED": "YES", "FL_SUPERLINK_CA_CERT": PEM_B64})])
    assert res.ok
    assert res.config is not None
    assert res.config.ca_cert_pem == PEM


def test_ca_certificate_base64_may_be_wrapped() -> None:
    wrapped = "\n".join(PEM_B64[i : i + 64] for i in range(0, len(PEM_B64), 64))
    res = resolve([("ctx", {"FL_TLS_ENABLED": "YES", "FL_SUPERLINK_CA_CERT": wrapped})])
    assert res.ok


def test_ca_with_tls_explicitly_off_is_a_warning_only() -> None:
    res = resolve([("ctx", {"FL_SUPERLINK_CA_CERT": PEM_B64, "FL_TLS_ENABLED": "NO"})])
    assert res.ok
    assert any("not used" in w for w in res.warnings)


def test_ca_without_any_tls_setting_is_an_error() -> None:
    """Regression: a CA with the TLS line missing (e.g. lost to a bad line) fell back to --insecure."""
    res = resolve([("ctx", {"ONEAPP_FL_SUPERLINK_CA_CERT": PEM_B64})])
    [err] = res.errors
    assert err.variable == "FL_TLS_ENABLED"
    assert "ONEAPP_FL_SUPERLINK_CA_CERT is set" in err.reason
    assert res.config is None


def test_secret_values_are_masked() -> None:
    bad = resolve_one("FL_SUPERLINK_CA_CERT", "c2VjcmV0LXN0dWZm")  # "secret-stuff"
    assert "c2VjcmV0" not in bad.errors[0].value
    assert "redacted" in bad.errors[0].value
    good = resolve([("ctx", {"FL_TLS_ENABLED": "YES", "FL_SUPERLINK_CA_CERT": PEM_B64})])
    shown = str(good.masked())
    assert PEM_B64 not in shown
    assert "BEGIN CERTIFICATE" not in shown


def test_long_values_are_truncated_in_errors() -> None:
    res = resolve_one("FL_ISOLATION", "x" * 500)
    assert len(res.errors[0].value) <= 60
    assert res.errors[0].value.endswith("...")


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("ONEAPP_FL_GPU_ENABLE", "did you mean ONEAPP_FL_GPU_ENABLED?"),
        ("fl_tls_enabled", "write FL_TLS_ENABLED"),
        ("Oneapp_Fl_Tls_Enabled", "write ONEAPP_FL_TLS_ENABLED"),
        ("FL_TLS", "not a variable of this appliance"),
        ("MY_FL_THING", "not a variable of this appliance"),
    ],
)
def test_fl_like_keys_in_another_spelling_are_errors(key: str, hint: str) -> None:
    """Regression: these were ignored (lower case silently, others with a warning)."""
    res = resolve([("ctx", {key: "YES-secret-value", "SSH_PUBLIC_KEY": "x", "FLAVOR": "y"})])
    [err] = res.errors
    assert err.variable == key
    assert hint in err.reason
    assert "secret-value" not in err.message() and err.value == ""


def test_table_lookup_accepts_both_spellings() -> None:
    assert lookup("ONEAPP_FL_GPU_ENABLED") is BY_NAME["FL_GPU_ENABLED"]
    assert lookup("FL_GPU_ENABLED") is BY_NAME["FL_GPU_ENABLED"]
    assert lookup("FL_NOPE") is None
    assert len({v.name for v in VARIABLES}) == len(VARIABLES)


def test_warm_clientapp_defaults_to_yes() -> None:
    res = resolve([("cd", {"FL_SUPERLINK_ADDRESS": "10.0.0.5"})])
    assert res.config is not None and res.config.warm_clientapp is True
    res = resolve([("cd", {"FL_SUPERLINK_ADDRESS": "10.0.0.5", "ONEAPP_FL_WARM_CLIENTAPP": "no"})])
    assert res.config is not None and res.config.warm_clientapp is False
