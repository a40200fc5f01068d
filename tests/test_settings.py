"""Settings from the environment: defaults, durations, messages naming the bad variable,
the round trip back to the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from crosslogic.plan import Plan, plan
from crosslogic.services import SERVICES, service, service_ports
from crosslogic.settings import SettingsError, load, parse_duration, to_env


def test_defaults_use_embedded_servers() -> None:
    settings = load({})
    assert settings.db_host is None and settings.redis_host is None
    assert (settings.server_port, settings.prometheus_port) == (8080, 9090)


def test_durations() -> None:
    assert parse_duration("X", "5m") == 300
    assert parse_duration("X", "500ms") == 0.5
    assert load({"BILLING_AGGREGATION_INTERVAL": "1h"}).billing_aggregation_interval == 3600


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SERVER_PORT", "http"),
        ("DB_PORT", "70000"),
        ("REDIS_PORT", "-1"),
        ("REDIS_CLUSTER", "127.0.0.1"),
        ("REDIS_CLUSTER", "a:7000, b:7001"),
        ("BILLING_EXPORT_INTERVAL", "soon"),
        ("BILLING_EXPORT_INTERVAL", "0s"),
        ("LOG_LEVEL", "verbose"),
        ("EXTAUTHZ_WORKERS", "many"),
        ("EXTAUTHZ_PROTOCOL", "http2"),
        ("PROMETHEUS_PORT", "0"),
        ("ENVOY_REQUEST_HEADERS_TIMEOUT", "0s"),
        ("ENVOY_REQUEST_TIMEOUT", "soon"),
        ("ENVOY_MAX_CONNECTIONS", "0"),
        ("XDS_REPLICAS", "0"),
        ("XDS_REPLICAS", "17"),
        ("RATELIMIT_REDIS_TIMEOUT", "200ms"),  # Envoy would give up on the call first
        ("RATELIMIT_REDIS_TIMEOUT", "0s"),
        ("STRIPE_API_BASE", "api.stripe.com"),
        ("STRIPE_API_BASE", "ftp://api.stripe.com"),
        ("STRIPE_METER_PROMPT_TOKENS", "prompt tokens"),
        ("STRIPE_METER_COMPLETION_TOKENS", "c" * 101),
        ("ADMIN_DB_POOL", "0"),
        ("EXTAUTHZ_DB_POOL", "many"),
        ("RATELIMIT_DB_POOL", "-2"),
        ("XDS_DB_POOL", "1001"),
        ("BILLING_DB_POOL", "0"),
        ("DB_READ_PORT", "70000"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load({name: value})


def test_stripe_export_settings() -> None:
    default = load({})
    assert (default.stripe_secret_key, default.stripe_api_base) == ("", "https://api.stripe.com")
    assert default.stripe_meter_prompt_tokens == "crosslogic_prompt_tokens"
    chosen = load(
        {
            "STRIPE_SECRET_KEY": "sk_test_1",
            "STRIPE_API_BASE": "http://127.0.0.1:4242",
            "STRIPE_METER_COMPLETION_TOKENS": "llm.output_tokens",
            "BILLING_EXPORT_INTERVAL": "1m",
        }
    )
    assert chosen.stripe_api_base == "http://127.0.0.1:4242"
    assert chosen.stripe_meter_completion_tokens == "llm.output_tokens"
    assert chosen.billing_export_interval == 60
    assert load(to_env(chosen)) == chosen


def test_heartbeat_timeout_must_exceed_interval() -> None:
    with pytest.raises(SettingsError, match="NODE_HEARTBEAT_TIMEOUT"):
        load({"NODE_HEARTBEAT_INTERVAL": "5s", "NODE_HEARTBEAT_TIMEOUT": "2s"})


def test_xds_replicas_take_consecutive_ports() -> None:
    assert load({}).xds_ports == (9003, 9004)
    assert load({"XDS_PORT": "7000", "XDS_REPLICAS": "3"}).xds_ports == (7000, 7001, 7002)
    with pytest.raises(SettingsError, match="XDS_PORT \\+ XDS_REPLICAS"):
        load({"XDS_PORT": "65535", "XDS_REPLICAS": "2"})


def test_to_env_round_trips() -> None:
    settings = load(
        {
            "DB_HOST": "db",
            "REDIS_HOST": "cache",
            "SERVER_PORT": "8181",
            "KEY_CACHE_TTL": "30s",
            "DATA_DIR": "/tmp/x",
            "XDS_REPLICAS": "3",
            "DB_READ_HOST": "replica",
            "DB_READ_PORT": "5433",
            "EXTAUTHZ_DB_POOL": "7",
        }
    )
    assert load(to_env(settings)) == settings


def test_pool_sizes_default_to_the_old_fixed_ones_and_no_replica() -> None:
    d = load({})
    assert (d.admin_db_pool, d.extauthz_db_pool, d.ratelimit_db_pool) == (5, 4, 2)
    assert (d.xds_db_pool, d.billing_db_pool) == (2, 3)
    assert d.db_read_host is None  # the primary serves every read
    assert load({"DB_READ_HOST": "  "}).db_read_host is None
    chosen = load({"ADMIN_DB_POOL": "1", "BILLING_DB_POOL": "1000", "DB_READ_HOST": "r"})
    assert (chosen.admin_db_pool, chosen.billing_db_pool, chosen.db_read_host) == (1, 1000, "r")


def test_a_plan_names_the_embedded_servers_before_they_start(tmp_path: Path) -> None:
    chosen = plan(load({"DATA_DIR": str(tmp_path)}))
    assert chosen.embedded_postgres and chosen.embedded_redis
    settings = chosen.settings
    assert settings.db_host == str((tmp_path / "pg").resolve())
    assert (settings.db_user, settings.db_name, settings.redis_host) == (
        "postgres",
        "crosslogic_iaas",
        "127.0.0.1",
    )
    assert settings.admin_token  # made up: the admin API is locked without one
    assert settings.node_registration_token.startswith("clrt_")  # and what its nodes use
    assert settings.node_registration_token != settings.admin_token
    assert load(to_env(settings)) == settings  # what every child is given
    assert chosen.ports()["REDIS_PORT"] == settings.redis_port


def test_a_plan_keeps_external_servers_and_a_given_token() -> None:
    given = load(
        {"DB_HOST": "db", "REDIS_HOST": "cache", "ADMIN_TOKEN": "t", "NODE_REGISTRATION_TOKEN": "r"}
    )
    chosen = plan(given)
    assert chosen.settings == given
    assert not chosen.embedded_postgres and not chosen.embedded_redis
    assert "REDIS_PORT" not in chosen.ports()  # an external Redis is not ours to check


def test_every_service_port_is_named_once() -> None:
    ports = service_ports(load({}))
    assert ports == {
        "SERVER_PORT": 8080,
        "PROMETHEUS_PORT": 9090,
        "XDS_PORT": 9003,
        "XDS_PORT+1": 9004,
        "EXTAUTHZ_PORT": 9001,
        "RATELIMIT_PORT": 9002,
    }
    assert [s.name for s in SERVICES] == ["admin", "xds", "extauthz", "ratelimit", "billing"]
    assert all(callable(s.main()) for s in SERVICES)  # each module has its run


def test_process_counts_follow_the_settings() -> None:
    def counts(**env: str) -> dict[str, int]:
        return {s.name: s.processes(load(env)) for s in SERVICES}

    assert counts(EXTAUTHZ_WORKERS="3", RATELIMIT_WORKERS="2", RATELIMIT_AT="service") == {
        "admin": 1,
        "xds": 2,
        "extauthz": 3,
        "ratelimit": 2,
        "billing": 1,
    }
    # nobody calls the rate-limit service when ext_authz decides: it is not started
    assert counts(RATELIMIT_AT="authz")["ratelimit"] == counts()["ratelimit"] == 0
    # scaled out: ADMIN_WORKERS admin processes, one billing per gateway
    assert counts(ADMIN_WORKERS="2", GATEWAYS="3") | {"extauthz": 0, "ratelimit": 0} == {
        "admin": 2,
        "xds": 2,
        "extauthz": 0,
        "ratelimit": 0,
        "billing": 3,
    }


def test_each_gateway_has_its_own_ports_log_and_name() -> None:
    settings = load({"GATEWAYS": "3", "ACCESS_LOG_PATH": "/var/log/cl/access.log"})
    assert settings.gateway(0) == settings
    third = settings.gateway(2)
    assert (third.gateway_id, third.envoy_port, third.envoy_admin_port) == (
        "gateway-3",
        10002,
        9903,
    )
    assert third.access_log == Path("/var/log/cl/access-3.log")
    # and each billing process is given its gateway's settings
    billing = service("billing")
    assert billing.process_env(settings, 0) == {}
    assert billing.process_env(settings, 2) == {
        "GATEWAY_ID": "gateway-3",
        "ENVOY_PORT": "10002",
        "ENVOY_ADMIN_PORT": "9903",
        "ACCESS_LOG_PATH": "/var/log/cl/access-3.log",
    }
    assert service("xds").process_env(settings, 1) == {"XDS_PORT": "9004"}
    assert (
        Plan(settings, embedded_postgres=False, embedded_redis=False).ports()["ENVOY_ADMIN_PORT+2"]
        == 9903
    )


@pytest.mark.parametrize("bad", ["", "-gw", "Gateway", "gw_1", "gw.1", "g" * 49])
def test_gateway_ids_are_plain_lower_case_names(bad: str) -> None:
    if bad == "":
        assert load({"GATEWAY_ID": bad}).gateway_id == "gateway"  # unset: the default
        return
    with pytest.raises(SettingsError, match="GATEWAY_ID"):
        load({"GATEWAY_ID": bad})


def test_the_last_gateway_port_must_exist() -> None:
    with pytest.raises(SettingsError, match="ENVOY_PORT \\+ GATEWAYS - 1 = 65536"):
        load({"ENVOY_PORT": "65534", "GATEWAYS": "3"})
