"""Blob store URLs: file:// and s3:// parsing (pure; only the last test builds stores, on tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.blobs import BlobStoreSpec, parse_blob_url

NO_ENV: dict[str, str] = {}
KEYS = {"CAMI_S3_ACCESS_KEY": "cami-user", "CAMI_S3_SECRET_KEY": "cami-secret-key"}


def test_file_url() -> None:
    assert parse_blob_url("file:///var/lib/cami/blobs", NO_ENV) == BlobStoreSpec(
        "file", {"root": Path("/var/lib/cami/blobs")}
    )


def test_file_url_localhost_and_escapes() -> None:
    spec = parse_blob_url("file://localhost/srv/cami%20blobs/", NO_ENV)
    assert spec.options["root"] == Path("/srv/cami blobs")


def test_scheme_is_case_insensitive() -> None:
    assert parse_blob_url("FILE:///x", NO_ENV).scheme == "file"
    assert parse_blob_url("S3://bucket-a", NO_ENV).scheme == "s3"


@pytest.mark.parametrize(
    "url",
    [
        "file://relative/dir",
        "file://otherhost/dir",
        "file:relative",
        "file:///x?fsync=0",
        "file:///x#frag",
        "file:///x%00y",
    ],
)
def test_bad_file_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_blob_url(url, NO_ENV)


def test_s3_url_full() -> None:
    spec = parse_blob_url("s3://cami-blobs/archive/dicom?endpoint=http://127.0.0.1:9000&region=eu-central-1", NO_ENV)
    assert spec == BlobStoreSpec(
        "s3",
        {
            "bucket": "cami-blobs",
            "prefix": "archive/dicom",
            "endpoint_url": "http://127.0.0.1:9000",
            "region": "eu-central-1",
        },
    )


def test_s3_url_minimal_and_encoded_endpoint() -> None:
    assert parse_blob_url("s3://bucket-a", NO_ENV).options == {"bucket": "bucket-a", "prefix": ""}
    assert parse_blob_url("s3://bucket-a/", NO_ENV).options["prefix"] == ""
    spec = parse_blob_url("s3://bucket-a/p/?endpoint=http%3A%2F%2F127.0.0.1%3A9000", NO_ENV)
    assert spec.options["endpoint_url"] == "http://127.0.0.1:9000"
    assert spec.options["prefix"] == "p"


def test_s3_timeouts_and_attempts() -> None:
    spec = parse_blob_url("s3://b-1?connect_timeout=0.5&read_timeout=3&max_attempts=2", NO_ENV)
    assert spec.options["connect_timeout"] == 0.5
    assert spec.options["read_timeout"] == 3.0
    assert spec.options["max_attempts"] == 2


def test_s3_credentials_from_cami_env() -> None:
    options = parse_blob_url("s3://bucket-a", KEYS).options
    assert (options["access_key"], options["secret_key"]) == ("cami-user", "cami-secret-key")


def test_s3_credentials_left_to_boto3_chain_without_cami_env() -> None:
    env = {"AWS_ACCESS_KEY_ID": "aws-user", "AWS_SECRET_ACCESS_KEY": "aws-secret"}
    options = parse_blob_url("s3://bucket-a", env).options
    assert "access_key" not in options and "secret_key" not in options  # boto3 reads AWS_* itself


def test_s3_region_from_aws_env_unless_in_url() -> None:
    assert parse_blob_url("s3://bucket-a", {"AWS_REGION": "ru-1"}).options["region"] == "ru-1"
    assert parse_blob_url("s3://bucket-a", {"AWS_DEFAULT_REGION": "ru-2"}).options["region"] == "ru-2"
    url = "s3://bucket-a?region=ru-3"
    assert parse_blob_url(url, {"AWS_REGION": "ru-1"}).options["region"] == "ru-3"


def test_half_cami_credentials_rejected() -> None:
    with pytest.raises(ValueError, match="both"):
        parse_blob_url("s3://bucket-a", {"CAMI_S3_ACCESS_KEY": "only-the-key"})


def test_credentials_in_url_rejected_without_echoing_them() -> None:
    with pytest.raises(ValueError) as info:
        parse_blob_url("s3://user:topsecret@bucket-a", NO_ENV)
    assert "topsecret" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix-only",
        "s3://bucket-a?endpoint=ftp://host",
        "s3://bucket-a?endpoint=",
        "s3://bucket-a?endpoint=http://a&endpoint=http://b",
        "s3://bucket-a?unknown=1",
        "s3://bucket-a?read_timeout=soon",
        "s3://bucket-a?max_attempts=0",
        "s3://bucket-a?connect_timeout=-1",
        "s3://bucket-a/../other",
        "s3://bucket-a/a//b",
        "s3://bucket-a#frag",
    ],
)
def test_bad_s3_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_blob_url(url, NO_ENV)


@pytest.mark.parametrize("url", ["", "blobs", "/abs/path", "http://host/x", "gs://bucket", "memory://"])
def test_unknown_schemes(url: str) -> None:
    with pytest.raises(ValueError):
        parse_blob_url(url, NO_ENV)


def test_unknown_scheme_message_hides_password() -> None:
    with pytest.raises(ValueError) as info:
        parse_blob_url("https://user:topsecret@host/x", NO_ENV)
    assert "topsecret" not in str(info.value)
    assert "file://" in str(info.value)


def test_open_blob_store_builds_without_io(tmp_path: Path) -> None:
    """Opening builds the object; s3 does no network I/O until used (no server here)."""
    from streams.blobs import open_blob_store
    from streams.blobs.local import LocalBlobStore
    from streams.blobs.s3 import S3BlobStore

    local = open_blob_store(f"file://{tmp_path}/blobs", NO_ENV)
    assert isinstance(local, LocalBlobStore) and local.root == tmp_path / "blobs"
    s3 = open_blob_store("s3://bucket-a/pre/fix?endpoint=http://127.0.0.1:1&region=ru-1", KEYS)
    assert isinstance(s3, S3BlobStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.region) == (
        "bucket-a",
        "pre/fix/",
        "http://127.0.0.1:1",
        "ru-1",
    )
    assert s3.key_for("0" * 64) == "pre/fix/sha256/00/00/" + "0" * 64
    s3.close()
