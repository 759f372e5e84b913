"""Where ``cami demo`` writes (api/demo/place.py): the configured home on the embedded defaults;
with a real server, topics, a bucket and a directory of its own, never the archive's."""

from __future__ import annotations

from pathlib import Path

from api.config import Settings
from api.demo.place import demo_place, demo_s3_url, see_again_command
from streams.topics import SOURCE_OF_TRUTH


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"CAMI_HOME": str(tmp_path / "home"), **env})


def test_on_the_embedded_defaults_the_demo_writes_where_it_always_did(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    place = demo_place(settings)
    assert not place.needs_consent
    assert place.settings == settings
    assert see_again_command(place) == "cami status"


def test_on_kafka_and_s3_it_asks_and_then_writes_to_its_own_topics_bucket_and_directory(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        CAMI_EVENT_LOG="kafka://127.0.0.1:9092?replication=1",
        CAMI_BLOBS="s3://cami/archive?endpoint=http://127.0.0.1:9000",
        CAMI_SENDERS=str(tmp_path / "senders.toml"),
    )
    place = demo_place(settings)
    assert place.needs_consent
    assert place.servers == ("Kafka at 127.0.0.1:9092", "S3 http://127.0.0.1:9000, bucket cami")
    demo = place.settings
    home = tmp_path / "home" / "demo"
    assert demo.home == home
    assert demo.event_log_url == "kafka://127.0.0.1:9092?replication=1&topic_prefix=cami-demo"
    assert demo.blob_store_url == "s3://cami-demo/archive?endpoint=http://127.0.0.1:9000"
    assert demo.warehouse_url == f"chdb://{home}/clickhouse"
    assert demo.senders_file == home / "senders.toml" and demo.users_file == home / "users.toml"
    assert demo.query_store_url == f"sqlite://{home}/query.db"
    kafka, s3, local = place.writes
    assert all(f"cami-demo.{t.split('.', 1)[1]}" in kafka for t in SOURCE_OF_TRUTH)
    assert "not the archive's cami.*" in kafka
    assert s3 == "S3 http://127.0.0.1:9000, bucket cami-demo (not bucket cami)"
    assert local.startswith(f"{home}: the read models")
    command = see_again_command(place)
    assert f"CAMI_HOME={home}" in command and "CAMI_SENDERS=''" in command and command.endswith(" cami status")
    assert "topic_prefix=cami-demo" in command


def test_a_prefix_of_the_archives_own_gets_the_suffix(tmp_path: Path) -> None:
    settings = _settings(tmp_path, CAMI_EVENT_LOG="kafka://b1:9092,b2:9092", CAMI_TOPIC_PREFIX="region50")
    place = demo_place(settings)
    assert place.settings.event_log_url == "kafka://b1:9092,b2:9092?topic_prefix=region50-demo"
    assert place.settings.blob_store_url == f"file://{tmp_path / 'home' / 'demo'}/blobs"
    assert "not the archive's region50.*" in place.writes[0]


def test_with_only_s3_the_event_log_is_the_demos_own_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, CAMI_BLOBS="s3://pilot?endpoint=http://127.0.0.1:9000")
    place = demo_place(settings)
    home = tmp_path / "home" / "demo"
    assert place.settings.event_log_url == f"sqlite://{home}/events.db"
    assert place.writes[-1].startswith(f"{home}: the event log, the read models")


def test_a_clickhouse_server_is_not_written_to(tmp_path: Path) -> None:
    settings = _settings(tmp_path, CAMI_CLICKHOUSE="clickhouse://cami:secret@10.0.0.7:8123/cami")
    place = demo_place(settings)
    assert place.servers == ("ClickHouse at 10.0.0.7:8123",)
    assert place.settings.warehouse_url.startswith("chdb://")
    assert "secret" not in " ".join(place.writes) + see_again_command(place)


def test_the_demo_bucket_fits_the_length_s3_allows() -> None:
    long = "b" * 60 + ".-x"
    bucket = demo_s3_url(f"s3://{long}?endpoint=http://s3:9000").split("://", 1)[1].split("?")[0]
    assert len(bucket) <= 63 and bucket.endswith("-demo") and ".-" not in bucket
