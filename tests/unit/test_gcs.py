"""vending.gcs: Cloud Storage V4 string-to-sign + canonical request checks, at their boundaries.

Every refusal is ``BadRequestError`` with reason ``invalid-string-to-sign``; the
bucket comes from the host (virtual-host style) or the first path segment
(path style), never from anything the signature does not cover.
"""

from __future__ import annotations

import datetime as _dt

import pytest

from tests.support.gcs_v4 import restamp, v4_request
from vending import gcs
from vending.errors import BadRequestError

SA = "demo-deployer@local-project.iam.gserviceaccount.com"
NOW = _dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=_dt.UTC)


def parse_v4(**kw: object) -> gcs.V4Request:
    kw.setdefault("at", NOW)
    req = v4_request(signer=SA, **kw)  # type: ignore[arg-type]
    return gcs.parse(req.payload, req.canonical_request, NOW)


def refused(payload: bytes, canonical_request: str | None, match: str) -> None:
    with pytest.raises(BadRequestError) as info:
        gcs.parse(payload, canonical_request, NOW)
    assert info.value.reason == "invalid-string-to-sign"
    assert info.value.http_status == 400
    assert match in info.value.message, info.value.message


def refused_v4(match: str, **kw: object) -> None:
    kw.setdefault("at", NOW)
    req = v4_request(signer=SA, **kw)  # type: ignore[arg-type]
    refused(req.payload, req.canonical_request, match)


# -- what a valid request yields ------------------------------------------------------------


def test_path_style_bucket_object_and_expiry() -> None:
    # GIVEN a path-style signed URL for allowed-bucket, signed now, valid 900 s
    v4 = parse_v4(bucket="allowed-bucket", obj="reports/q4.csv", expires_s=900, method="PUT")
    # THEN the bucket is the first path segment and the expiry is timestamp + X-Goog-Expires
    assert (v4.bucket, v4.object_path, v4.method) == ("allowed-bucket", "reports/q4.csv", "PUT")
    assert v4.signed_at == NOW
    assert v4.expires_at == NOW + _dt.timedelta(seconds=900)


def test_virtual_host_bucket_comes_from_the_host() -> None:
    v4 = parse_v4(bucket="allowed-bucket", obj="reports/q4.csv", virtual_host=True)
    assert (v4.bucket, v4.object_path) == ("allowed-bucket", "reports/q4.csv")


def test_dotted_bucket_in_virtual_host() -> None:
    v4 = parse_v4(bucket="my.dotted.bucket", obj="a", virtual_host=True)
    assert v4.bucket == "my.dotted.bucket"


def test_object_name_is_percent_encoded_path() -> None:
    v4 = parse_v4(obj="dir/a b+c.txt")
    assert v4.object_path == "dir/a%20b%2Bc.txt"


def test_extra_signed_headers_are_accepted() -> None:
    v4 = parse_v4(headers={"content-type": "text/plain", "x-goog-meta-owner": "ci"}, method="PUT")
    assert v4.bucket == "allowed-bucket"


# -- timestamp skew: 900 s either way ---------------------------------------------------------------


@pytest.mark.parametrize("skew_s", [-900, -899, 0, 899, 900])
def test_timestamp_within_900_seconds_is_accepted(skew_s: int) -> None:
    v4 = parse_v4(at=NOW + _dt.timedelta(seconds=skew_s), expires_s=3600)
    assert v4.signed_at == NOW + _dt.timedelta(seconds=skew_s)
    assert v4.expires_at == v4.signed_at + _dt.timedelta(seconds=3600)


@pytest.mark.parametrize("skew_s", [-901, 901, -86400, 86400])
def test_timestamp_beyond_900_seconds_is_refused(skew_s: int) -> None:
    refused_v4("more than 900 seconds from now", at=NOW + _dt.timedelta(seconds=skew_s), expires_s=3600)


def test_url_that_would_already_have_expired_is_refused() -> None:
    # GIVEN a timestamp 10 min ago (within the skew) and X-Goog-Expires of 5 min
    refused_v4("already have expired", at=NOW - _dt.timedelta(seconds=600), expires_s=300)


def test_url_expiring_one_second_from_now_is_accepted() -> None:
    v4 = parse_v4(at=NOW - _dt.timedelta(seconds=299), expires_s=300)
    assert v4.expires_at == NOW + _dt.timedelta(seconds=1)


# -- X-Goog-Expires: 1 .. 604800 ----------------------------------------------------------------------


@pytest.mark.parametrize("expires_s", [1, 604800])
def test_x_goog_expires_bounds_are_accepted(expires_s: int) -> None:
    assert parse_v4(expires_s=expires_s).expires_at == NOW + _dt.timedelta(seconds=expires_s)


@pytest.mark.parametrize("expires_s", [0, 604801])
def test_x_goog_expires_out_of_bounds_is_refused(expires_s: int) -> None:
    refused_v4("between 1 and 604800", expires_s=expires_s)


@pytest.mark.parametrize("expires_s", ["", "-1", "1.5", "+60", "0x10", "99999999"])
def test_x_goog_expires_not_whole_seconds_is_refused(expires_s: str) -> None:
    refused_v4("X-Goog-Expires", expires_s=expires_s)


def test_missing_x_goog_expires_is_refused() -> None:
    refused_v4("no X-Goog-Expires", drop=("X-Goog-Expires",))


# -- the query must agree with the string-to-sign (Cloud Storage rebuilds it from the URL) --------------


def test_x_goog_date_differing_from_the_timestamp_is_refused() -> None:
    refused_v4("X-Goog-Date", query={"X-Goog-Date": "20261128T115959Z"})


def test_x_goog_credential_with_another_scope_is_refused() -> None:
    refused_v4("X-Goog-Credential", query={"X-Goog-Credential": f"{SA}/20261128/us/storage/goog4_request"})


def test_x_goog_credential_without_signer_is_refused() -> None:
    refused_v4("X-Goog-Credential", query={"X-Goog-Credential": "/20261128/auto/storage/goog4_request"})


@pytest.mark.parametrize("algorithm", ["GOOG4-HMAC-SHA256", "AWS4-HMAC-SHA256", ""])
def test_other_algorithm_in_query_is_refused(algorithm: str) -> None:
    refused_v4("X-Goog-Algorithm", query={"X-Goog-Algorithm": algorithm})


def test_signed_headers_param_must_match() -> None:
    refused_v4("X-Goog-SignedHeaders", query={"X-Goog-SignedHeaders": "content-type;host"})


def test_repeated_query_parameter_is_refused() -> None:
    req = v4_request(signer=SA, at=NOW, expires_s=60)
    lines = req.canonical_request.split("\n")
    lines[2] += "&X-Goog-Expires=604800"  # a second X-Goog-Expires: which one would Cloud Storage use?
    canonical = "\n".join(lines)
    refused(restamp(canonical, NOW), canonical, "repeats X-Goog-Expires")


# -- the bucket ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example.com",
        "storage.googleapis.com.evil.example",
        "allowed-bucket.storage.googleapis.com.evil.example",
        "STORAGE.GOOGLEAPIS.COM",
        "storage.googleapis.com:443",
        "",
    ],
)
def test_host_other_than_cloud_storage_is_refused(host: str) -> None:
    req = v4_request(signer=SA, at=NOW)
    canonical = req.canonical_request.replace("host:storage.googleapis.com\n", f"host:{host}\n")
    refused(restamp(canonical, NOW), canonical, "host header of storage.googleapis.com")


def test_duplicate_host_header_is_refused() -> None:
    req = v4_request(signer=SA, at=NOW, bucket="allowed-bucket", virtual_host=True)
    canonical = req.canonical_request.replace(
        "host:allowed-bucket.storage.googleapis.com\n",
        "host:allowed-bucket.storage.googleapis.com\nhost:other-bucket.storage.googleapis.com\n",
    )
    refused(restamp(canonical, NOW), canonical, "distinct lowercase")


def test_unsigned_host_is_refused() -> None:
    req = v4_request(signer=SA, at=NOW, headers={"content-type": "text/plain"})
    lines = req.canonical_request.split("\n")
    # drop the host header line and list only content-type as signed
    lines = [ln for ln in lines if not ln.startswith("host:")]
    lines = [("content-type" if ln == "content-type;host" else ln) for ln in lines]
    canonical = "\n".join(lines)
    refused(restamp(canonical, NOW), canonical, "sign the host header")


@pytest.mark.parametrize(
    "path", ["//allowed-bucket/obj", "allowed-bucket/obj", "/", "/Allowed-Bucket/obj", "/ab/obj", "/-bucket/obj"]
)
def test_path_style_without_a_valid_bucket_is_refused(path: str) -> None:
    req = v4_request(signer=SA, at=NOW, bucket="allowed-bucket", obj="obj")
    lines = req.canonical_request.split("\n")
    lines[1] = path
    canonical = "\n".join(lines)
    with pytest.raises(BadRequestError) as info:
        gcs.parse(restamp(canonical, NOW), canonical, NOW)
    assert info.value.reason == "invalid-string-to-sign"


def test_path_style_bucket_without_object_is_the_bucket() -> None:
    req = v4_request(signer=SA, at=NOW, bucket="allowed-bucket", obj="obj")
    canonical = req.canonical_request.replace("\n/allowed-bucket/obj\n", "\n/allowed-bucket\n")
    v4 = gcs.parse(restamp(canonical, NOW), canonical, NOW)
    assert (v4.bucket, v4.object_path) == ("allowed-bucket", "")


# -- the string-to-sign and the canonical request ------------------------------------------------------


def test_hash_mismatch_is_refused() -> None:
    req = v4_request(signer=SA, at=NOW, bucket="allowed-bucket")
    other = req.canonical_request.replace("/allowed-bucket/", "/other-bucket/")
    refused(req.payload, other, "does not match the hash")


def test_missing_canonical_request_is_refused() -> None:
    req = v4_request(signer=SA, at=NOW)
    refused(req.payload, None, "canonical_request is required")


@pytest.mark.parametrize(
    "payload",
    [
        b"hello world",
        b"",
        "GOOG4-RSA-SHA256\n20261128T120000Z\n20261128/auto/storage/goog4_request\n\xe9".encode("latin-1"),
    ],
)
def test_not_a_string_to_sign_is_refused(payload: bytes) -> None:
    with pytest.raises(BadRequestError) as info:
        gcs.parse(payload, "GET\n/a/b\n\nhost:storage.googleapis.com\n\nhost\nUNSIGNED-PAYLOAD", NOW)
    assert info.value.reason == "invalid-string-to-sign"


def test_trailing_newline_in_string_to_sign_is_refused() -> None:
    req = v4_request(signer=SA, at=NOW)
    refused(req.payload + b"\n", req.canonical_request, "four lines")


def test_hmac_algorithm_line_is_refused() -> None:
    req = v4_request(signer=SA, at=NOW)
    refused(req.payload.replace(b"GOOG4-RSA-SHA256", b"GOOG4-HMAC-SHA256", 1), req.canonical_request, "four lines")


@pytest.mark.parametrize(
    "scope",
    [
        "20261127/auto/storage/goog4_request",  # not the timestamp's date
        "20261128//storage/goog4_request",  # no location
        "20261128/auto/s3/goog4_request",
        "20261128/auto/storage/aws4_request",
        "20261128/auto/storage",
    ],
)
def test_bad_credential_scope_is_refused(scope: str) -> None:
    req = v4_request(signer=SA, at=NOW)
    lines = req.string_to_sign.split("\n")
    lines[2] = scope
    refused("\n".join(lines).encode(), req.canonical_request, "credential scope")


@pytest.mark.parametrize("stamp", ["20261128T120000", "2026-11-28T12:00:00Z", "20261340T120000Z", ""])
def test_bad_timestamp_is_refused(stamp: str) -> None:
    req = v4_request(signer=SA, at=NOW)
    lines = req.string_to_sign.split("\n")
    lines[1] = stamp
    refused("\n".join(lines).encode(), req.canonical_request, "timestamp")


@pytest.mark.parametrize(
    "canonical",
    [
        "GET\n/allowed-bucket/o\nX-Goog-Expires=60",  # too short
        "GET\n/allowed-bucket/o\nq\nhost:storage.googleapis.com\nhost\nUNSIGNED-PAYLOAD\nx",  # no blank line
        "FETCH\n/allowed-bucket/o\nq\nhost:storage.googleapis.com\n\nhost\nUNSIGNED-PAYLOAD",  # bad method
        "GET\n/allowed-bucket/o\nq\nhost:storage.googleapis.com\n\nhost\nUNSIGNED-PAYLOAD\nextra",
    ],
)
def test_malformed_canonical_request_is_refused(canonical: str) -> None:
    refused(restamp(canonical, NOW), canonical, "canonical request")
