"""The naive token vendor, written the way the Google samples show it.

    python -m functions_framework --target vend_naive --source bench/naive.py --port P

Per request: ``google.oauth2.id_token.verify_token`` (which fetches the
issuer's keys every time), ``google.auth.impersonated_credentials``
refreshed for the target, and a new ``firestore.Client()`` writing one
record. No replay protection, no reservation before the IAM call, no policy
file: a baseline for speed only. Settings come from ``NAIVE_*`` variables.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import functions_framework
import google.auth.transport.requests
import google.oauth2.credentials
from google.auth import impersonated_credentials
from google.cloud import firestore
from google.oauth2 import id_token

AUDIENCE = os.environ.get("NAIVE_AUDIENCE", "")
CERTS_URL = os.environ.get("NAIVE_CERTS_URL", "")
IAM_ENDPOINT = os.environ.get("NAIVE_IAM_ENDPOINT", "")
IAM_TOKEN = os.environ.get("NAIVE_IAM_TOKEN", "")
PROJECT = os.environ.get("NAIVE_PROJECT", "")


@functions_framework.http
def vend_naive(request: Any) -> Any:
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        return {"error": "unauthenticated"}, 401
    try:
        claims = id_token.verify_token(
            auth[7:], google.auth.transport.requests.Request(), audience=AUDIENCE, certs_url=CERTS_URL
        )
    except Exception as exc:  # noqa: BLE001 - the samples catch everything here
        return {"error": f"unauthenticated: {exc}"}, 401
    body = request.get_json(silent=True) or {}
    target = body.get("service_account", "")
    lifetime = int(str(body.get("lifetime", "600")).rstrip("s"))
    # Locally the runtime's own credentials are the stand-in's static bearer (ADC on Cloud Functions).
    source = google.oauth2.credentials.Credentials(token=IAM_TOKEN)
    creds = impersonated_credentials.Credentials(
        source_credentials=source,
        target_principal=target,
        target_scopes=body.get("scopes", []),
        lifetime=lifetime,
        iam_endpoint_override=f"{IAM_ENDPOINT}/v1/projects/-/serviceAccounts/{target}:generateAccessToken",
    )
    creds.refresh(google.auth.transport.requests.Request())
    db = firestore.Client(project=PROJECT)
    db.collection("naive_issuances").add(
        {
            "sub": claims["sub"],
            "service_account": target,
            "expire_time": creds.expiry,
            "created_at": dt.datetime.now(dt.UTC),
        }
    )
    return {
        "access_token": creds.token,
        "token_type": "Bearer",
        "expire_time": creds.expiry.replace(tzinfo=dt.UTC).isoformat(),
    }
