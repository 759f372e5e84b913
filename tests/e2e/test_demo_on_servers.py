"""``cami demo`` on real servers (Kafka, MinIO): it says where it would write and stops; with
``--yes`` it writes to topics, groups and a bucket of its own, never the archive's, and the lag it
reports is its own projections' on its own topics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest
from confluent_kafka.admin import AdminClient

from tests.support.cli import run_cami
from tests.support.servers import KafkaServer, MinioServer


@pytest.mark.kafka
@pytest.mark.s3
@pytest.mark.slow
def test_demo_on_real_servers_asks_then_writes_only_to_its_own_places(tmp_path: Path) -> None:
    kafka = KafkaServer(tmp_path / "kafka")
    minio = MinioServer(tmp_path / "minio")
    kafka.start()
    minio.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CAMI_", "AWS_"))}
        env.update(
            {
                "CAMI_HOME": str(tmp_path / "home"),
                "CAMI_EVENT_LOG": f"kafka://{kafka.bootstrap}",
                "CAMI_BLOBS": f"s3://pilot?endpoint={minio.endpoint}",
                "CAMI_S3_ACCESS_KEY": minio.access_key,
                "CAMI_S3_SECRET_KEY": minio.secret_key,
                "CAMI_PARTITIONS": "2",
            }
        )
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        s3 = boto3.client(
            "s3",
            endpoint_url=minio.endpoint,
            aws_access_key_id=minio.access_key,
            aws_secret_access_key=minio.secret_key,
            region_name="us-east-1",
        )

        asked = run_cami("demo", env=env, timeout=120)
        assert asked.returncode == 1, asked.stderr
        assert f"Kafka at {kafka.bootstrap}" in asked.stderr and "--yes" in asked.stderr
        assert "topics cami-demo.dicom, cami-demo.reports" in asked.stderr
        assert f"S3 {minio.endpoint}, bucket pilot-demo (not bucket pilot)" in asked.stderr
        assert not [t for t in admin.list_topics(timeout=10).topics if t.startswith("cami")]
        assert s3.list_buckets()["Buckets"] == []

        done = run_cami("demo", "--yes", "--json", env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        demo, state = report["demo"], report["state"]
        assert demo["instances_stored"] == demo["instances_sent"] >= 100
        lag = {name: sum(per_topic.values()) for name, per_topic in state["projection_lag"].items()}
        assert lag and set(lag.values()) == {0}, lag
        events = state["event_log"]["events_per_topic"]
        assert events["cami.dicom"] >= demo["instances_stored"]

        topics = admin.list_topics(timeout=10).topics
        ours = {t for t in topics if t.startswith("cami")}
        assert ours and all(t.startswith("cami-demo.") for t in ours), ours
        groups = {g.group_id for g in admin.list_consumer_groups().result(timeout=10).valid}
        assert not [g for g in groups if g.startswith("cami.") or g == "cami-processors"], groups
        assert "cami-demo.archive-index" in groups
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["pilot-demo"]
        assert s3.list_objects_v2(Bucket="pilot-demo", MaxKeys=1)["KeyCount"] == 1

        # the line it printed shows the demo's data again; the archive's own settings show none of it
        again = run_cami("status", "--json", env={**env, **demo["place"]["see_again"]}, timeout=300)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["event_log"]["events_per_topic"] == events
        real = run_cami("status", "--json", env=env, timeout=300)
        assert real.returncode == 0, real.stderr
        assert set(json.loads(real.stdout)["event_log"]["events_per_topic"].values()) == {0}
    finally:
        kafka.stop()
        minio.stop()
