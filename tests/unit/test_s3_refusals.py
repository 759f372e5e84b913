"""The one line a refused S3 credential or an endpoint that does not answer gives at start
(streams/blobs/s3.py): where, which key (never the secret), why, what to change."""

from __future__ import annotations

import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

from streams.blobs.s3 import credentials_source, refusal_message, unreachable_message

WHERE = {"endpoint": "http://10.1.2.3:9000", "bucket": "cami", "access_key": "cami-pilot"}


@pytest.mark.parametrize(
    ("code", "creating", "says"),
    [
        (
            "InvalidAccessKeyId",
            False,
            ["does not know access key 'cami-pilot'", "InvalidAccessKeyId", "AWS_ACCESS_KEY_ID"],
        ),
        ("SignatureDoesNotMatch", False, ["refused the secret key", "secret is wrong", "AWS_SECRET_ACCESS_KEY"]),
        ("AccessDenied", False, ["denies access key 'cami-pilot' the bucket cami", "list, read and write"]),
        ("403", False, ["(HTTP 403)"]),
        ("AccessDenied", True, ["does not let access key 'cami-pilot' create bucket cami", "create the bucket"]),
        ("ExpiredToken", False, ["session token", "renew"]),
        ("RequestTimeTooSkewed", False, ["clock", "NTP"]),
    ],
)
def test_a_refusal_names_the_endpoint_bucket_key_cause_and_fix(code: str, creating: bool, says: list[str]) -> None:
    line = refusal_message(code, source=credentials_source("env"), creating=creating, **WHERE)
    assert "http://10.1.2.3:9000" in line and "cami" in line
    for words in says:
        assert words in line
    assert "\n" not in line


def test_without_credentials_it_says_which_variables_to_set() -> None:
    line = refusal_message("", endpoint="http://10.1.2.3:9000", bucket="cami", access_key=None, source="")
    assert line == (
        "no S3 credentials for bucket cami at http://10.1.2.3:9000: set CAMI_S3_ACCESS_KEY / CAMI_S3_SECRET_KEY"
        " (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    )


def test_the_source_of_the_credentials_is_named_as_people_set_it() -> None:
    assert credentials_source("explicit") == "CAMI_S3_ACCESS_KEY / CAMI_S3_SECRET_KEY"
    assert credentials_source("env") == "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    assert "~/.aws/credentials" in credentials_source("shared-credentials-file")
    assert credentials_source("iam-role") == "boto3's credential chain (iam-role)"


def test_an_endpoint_that_does_not_answer_is_named_with_what_was_seen() -> None:
    refused = EndpointConnectionError(
        endpoint_url="http://127.0.0.1:9/cami",
        error="AWSHTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection: "
        "[Errno 111] Connection refused",
    )
    assert unreachable_message(refused, endpoint="http://127.0.0.1:9", bucket="cami") == (
        "S3 endpoint http://127.0.0.1:9 does not answer (connection refused), bucket cami:"
        " start the S3 server or correct the endpoint in CAMI_BLOBS"
    )
    silent = ConnectTimeoutError(endpoint_url="http://10.9.9.9:9000/cami")
    assert "(no connection within the connect timeout)" in unreachable_message(
        silent, endpoint="http://10.9.9.9:9000", bucket="cami"
    )
