"""Settings from the environment: defaults, durations, messages naming the bad variable,
the round trip back to the environment."""

from __future__ import annotations

import pytest

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
        ("BILLING_EXPORT_INTERVAL", "soon"),
        ("BILLING_EXPORT_INTERVAL", "0s"),
        ("LOG_LEVEL", "verbose"),
        ("EXTAUTHZ_WORKERS", "many"),
        ("PROMETHEUS_PORT", "0"),
        ("ENVOY_REQUEST_HEADERS_TIMEOUT", "0s"),
        ("ENVOY_REQUEST_TIMEOUT", "soon"),
        ("ENVOY_MAX_CONNECTIONS", "0"),
        ("RATELIMIT_REDIS_TIMEOUT", "200ms"),  # Envoy would give up on the call first
        ("RATELIMIT_REDIS_TIMEOUT", "0s"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load({name: value})


def test_heartbeat_timeout_must_exceed_interval() -> None:
    with pytest.raises(SettingsError, match="NODE_HEARTBEAT_TIMEOUT"):
        load({"NODE_HEARTBEAT_INTERVAL": "5s", "NODE_HEARTBEAT_TIMEOUT": "2s"})


def test_to_env_round_trips() -> None:
    settings = load(
        {
            "DB_HOST": "db",
            "REDIS_HOST": "cache",
            "SERVER_PORT": "8181",
            "KEY_CACHE_TTL": "30s",
            "DATA_DIR": "/tmp/x",
        }
    )
    assert load(to_env(settings)) == settings
