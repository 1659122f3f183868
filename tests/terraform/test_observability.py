"""Metrics, alerts and the dashboard in Terraform match what the code logs (issue 17, item 6).

Offline (python-hcl2). Each log-based metric's filter names log fields and
messages; this test finds each of them in the code that writes them, so a
renamed log line fails here instead of silencing an alert. And each alert the
issue asks for exists: break-glass used, kill switch engaged, 5xx rate, IAM
errors, `unconfirmed` records, sweep not running; plus one dashboard.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.terraform.test_wiring import REPO, TERRAFORM_DIR, Terraform, load_terraform

VENDING = REPO / "vending"


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return load_terraform(TERRAFORM_DIR)


@pytest.fixture(scope="module")
def code() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(VENDING.rglob("*.py")))


def _metrics(tf: Terraform) -> dict[str, dict[str, object]]:
    metric = tf.get("google_logging_metric", "this")
    assert metric is not None
    metrics = tf.local(metric, "log_metrics")
    assert isinstance(metrics, dict)
    return metrics


def test_each_metric_filter_names_lines_the_code_writes(tf: Terraform, code: str) -> None:
    # GIVEN each log-based metric's filter
    for name, spec in _metrics(tf).items():
        flt = str(spec["filter"])
        # THEN every quoted message / event type / reason it matches appears in the code
        for literal in re.findall(r'jsonPayload\.(?:message|event\.type)=\\?"([^"\\]+)', flt):
            assert f'"{literal}"' in code, (name, literal)
        for field in re.findall(r"jsonPayload\.(\w+)", flt):
            assert re.search(rf"\b{field}\b", code), (name, field)


def test_the_audit_line_carries_the_fields_the_metrics_extract(code: str) -> None:
    # GIVEN the vend pipeline's audit line  THEN it logs audit, decision, reason and kind
    vend = (VENDING / "vend.py").read_text(encoding="utf-8")
    for field in ("audit=True", "decision=", "reason=", "kind="):
        assert field in vend, field


@pytest.mark.parametrize(
    "metric", ["vends", "break_glass_used", "kill_switch_engaged", "iam_errors", "unconfirmed", "sweep_runs"]
)
def test_the_metrics_the_issue_asks_for_exist(tf: Terraform, metric: str) -> None:
    assert metric in _metrics(tf)


def test_the_alerts_the_issue_asks_for_exist(tf: Terraform) -> None:
    counts = tf.get("google_monitoring_alert_policy", "log_counts")
    assert counts is not None
    alerts = str(counts.body.get("for_each"))
    assert "local.count_alerts" in alerts
    text = Path(TERRAFORM_DIR / "modules" / "token-vending" / "monitoring.tf").read_text(encoding="utf-8")
    for key in ("break_glass_used", "kill_switch_engaged", "iam_errors", "unconfirmed"):
        assert re.search(rf"^\s+{key} = \{{\s*\n\s+display", text, re.M), key
    http = tf.get("google_monitoring_alert_policy", "http_5xx")
    assert http is not None and "response_code_class" in str(http.body)
    sweep = tf.get("google_monitoring_alert_policy", "sweep_not_running")
    assert sweep is not None and "condition_absent" in str(sweep.body)
    assert tf.get("google_monitoring_dashboard", "this") is not None


def test_alerts_go_to_the_configured_channels(tf: Terraform) -> None:
    for alert in tf.of_type("google_monitoring_alert_policy"):
        assert alert.body.get("notification_channels") == "${var.alert_notification_channels}", alert.address
