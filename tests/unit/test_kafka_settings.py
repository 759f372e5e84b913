"""CAMI_KAFKA_WAIT and CAMI_TOPIC_PREFIX: checked with the other settings, carried in the event
log URL (its ``wait`` and ``topic_prefix`` options) to every process that opens the log."""

from __future__ import annotations

import pytest

from api.config import ConfigError, Settings
from streams import parse_wait


def test_the_variables_become_options_of_the_kafka_url() -> None:
    settings = Settings.from_env(
        {"CAMI_EVENT_LOG": "kafka://b1:9092", "CAMI_KAFKA_WAIT": "30", "CAMI_TOPIC_PREFIX": "region50"}
    )
    assert settings.event_log_url == "kafka://b1:9092?wait=30&topic_prefix=region50"


def test_the_urls_own_options_win() -> None:
    settings = Settings.from_env(
        {"CAMI_EVENT_LOG": "kafka://b1:9092?topic_prefix=cami-demo&wait=5", "CAMI_TOPIC_PREFIX": "region50"}
    )
    assert settings.event_log_url == "kafka://b1:9092?topic_prefix=cami-demo&wait=5"


def test_without_them_the_url_is_as_given() -> None:
    assert Settings.from_env({"CAMI_EVENT_LOG": "kafka://b1:9092"}).event_log_url == "kafka://b1:9092"
    embedded = Settings.from_env({"CAMI_HOME": "/tmp/x", "CAMI_TOPIC_PREFIX": "region50"}).event_log_url
    assert embedded.startswith("sqlite://") and "region50" not in embedded


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CAMI_KAFKA_WAIT": "soon"}, "CAMI_KAFKA_WAIT: 'soon' is not a number of seconds"),
        ({"CAMI_KAFKA_WAIT": "-1"}, "CAMI_KAFKA_WAIT: '-1'"),
        ({"CAMI_TOPIC_PREFIX": "cami demo"}, "CAMI_TOPIC_PREFIX: 'cami demo' is not a topic prefix"),
        ({"CAMI_EVENT_LOG": "kafka://b1:9092?topic_prefix=a/b"}, "CAMI_EVENT_LOG: option topic_prefix: 'a/b'"),
        ({"CAMI_EVENT_LOG": "kafka://b1:9092?wait=inf"}, "CAMI_EVENT_LOG: option wait: 'inf'"),
    ],
)
def test_a_bad_value_is_one_line_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        Settings.from_env(env)


def test_a_wait_is_a_number_of_seconds() -> None:
    assert parse_wait("0") == 0.0
    assert parse_wait("2.5") == 2.5
    with pytest.raises(ValueError):
        parse_wait("nan")
