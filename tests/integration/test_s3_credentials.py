"""Credentials MinIO refuses, an endpoint that does not answer: one line naming the endpoint,
the bucket, the access key (never the secret) and what to change -- from the store itself and
from ``cami status`` / ``cami serve`` run as commands, without a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.blobs import BlobStoreError, BlobUnavailable
from streams.blobs.s3 import S3AccessRefused, S3BlobStore, S3Unreachable
from streams.errors import OperatorError
from tests.support.cli import run_cami
from tests.support.servers import MinioServer, free_port

WRONG_SECRET = "not-the-secret-4711"


def _store(endpoint: str, access_key: str, secret_key: str) -> S3BlobStore:
    return S3BlobStore("cami-credentials", endpoint_url=endpoint, access_key=access_key, secret_key=secret_key)


@pytest.mark.s3
def test_a_wrong_secret_names_the_key_the_endpoint_and_the_bucket(minio_server: MinioServer) -> None:
    store = _store(minio_server.endpoint, minio_server.access_key, WRONG_SECRET)
    with pytest.raises(S3AccessRefused) as refused:
        store.ensure_ready()
    store.close()
    line = str(refused.value)
    assert line == (
        f"S3 at {minio_server.endpoint} refused the secret key of access key {minio_server.access_key!r}"
        " (SignatureDoesNotMatch), bucket cami-credentials: the secret is wrong; correct CAMI_S3_SECRET_KEY"
    )
    assert isinstance(refused.value, BlobStoreError) and isinstance(refused.value, OperatorError)


@pytest.mark.s3
def test_an_unknown_access_key_is_named(minio_server: MinioServer) -> None:
    store = _store(minio_server.endpoint, "nobody-here", WRONG_SECRET)
    with pytest.raises(S3AccessRefused, match=r"does not know access key 'nobody-here' \(InvalidAccessKeyId\)"):
        store.ensure_ready()
    store.close()


def test_an_endpoint_that_does_not_answer_is_named() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = _store(endpoint, "cami-test", WRONG_SECRET)
    with pytest.raises(S3Unreachable) as unreachable:
        store.ensure_ready()
    store.close()
    assert str(unreachable.value) == (
        f"S3 endpoint {endpoint} does not answer (connection refused), bucket cami-credentials:"
        " start the S3 server or correct the endpoint in CAMI_BLOBS"
    )
    assert isinstance(unreachable.value, BlobUnavailable)


@pytest.mark.s3
@pytest.mark.parametrize("command", [["status"], ["serve"], ["demo", "--yes"]], ids=" ".join)
def test_the_commands_say_it_in_one_line_without_a_traceback(
    minio_server: MinioServer, tmp_path: Path, command: list[str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAMI_", "AWS_"))}
    env.update(
        {
            "CAMI_HOME": str(tmp_path / "home"),
            "CAMI_BLOBS": f"s3://cami-pilot?endpoint={minio_server.endpoint}",
            "AWS_ACCESS_KEY_ID": minio_server.access_key,
            "AWS_SECRET_ACCESS_KEY": WRONG_SECRET,
            "CAMI_DICOM_PORT": "0",
            "CAMI_HTTP_PORT": "0",
            "CAMI_HL7_PORT": "0",
        }
    )
    result = run_cami(*command, env=env, timeout=120)
    assert result.returncode == 1
    bucket = "cami-pilot-demo" if command[0] == "demo" else "cami-pilot"  # the demo's own bucket
    line = (
        f"cami {command[0]}: S3 at {minio_server.endpoint} refused the secret key of access key"
        f" {minio_server.access_key!r} (SignatureDoesNotMatch), bucket {bucket}: the secret is wrong;"
        " correct AWS_SECRET_ACCESS_KEY"
    )
    if command[0] == "demo":  # after the lines that say where it writes
        assert result.stderr.endswith(f"\n{line}\n") and "Traceback" not in result.stderr, result.stderr
    else:
        assert result.stderr == f"{line}\n"
    assert WRONG_SECRET not in result.stderr + result.stdout
