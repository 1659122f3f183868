"""Several regions behind one HTTPS load balancer (issue 17, item 7), checked offline.

The extra regions' vend functions are copies of vend_http (main.tf): the same
service settings, environment, session key and account, so a region never
behaves differently; the load balancer listens on 443 only, with TLS 1.2+;
its serverless NEGs point at the vend service of each region; extra regions
require the load balancer and a multi-region Firestore location.
"""

from __future__ import annotations

import json

import pytest

from tests.terraform.test_wiring import TERRAFORM_DIR, Terraform, _first, load_terraform


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return load_terraform(TERRAFORM_DIR)


def _normalize(value: object) -> str:
    text = json.dumps(value, sort_keys=True)
    return text.replace("[each.value]", "[var.region]")


def test_the_regional_copies_are_vend_http(tf: Terraform) -> None:
    primary = tf.get("google_cloudfunctions2_function", "vend_http")
    copy = tf.get("google_cloudfunctions2_function", "vend_http_regional")
    assert primary is not None and copy is not None
    # GIVEN both functions' service and build settings  THEN they are the same (but for the region)
    assert _first(copy.body["service_config"]) == _first(primary.body["service_config"])
    build_copy, build_primary = _first(copy.body["build_config"]), _first(primary.body["build_config"])
    assert _normalize(build_copy) == _normalize(build_primary)
    assert copy.body["name"] == primary.body["name"]  # one service name: the NEGs and metrics find every region
    assert copy.body["location"] == "${each.value}"


def test_extra_regions_need_the_load_balancer_and_a_multi_region_database(tf: Terraform) -> None:
    copy = tf.get("google_cloudfunctions2_function", "vend_http_regional")
    assert copy is not None
    conditions = json.dumps(copy.body.get("lifecycle"))
    assert "local.load_balancer" in conditions
    assert "local.firestore_multi_regions" in conditions
    locals_ = tf.locals[copy.path.parent]
    assert locals_["firestore_multi_regions"] == ["nam5", "eur3"]


def test_the_load_balancer_is_https_only_with_modern_tls(tf: Terraform) -> None:
    rules = tf.of_type("google_compute_global_forwarding_rule")
    assert [r.body["port_range"] for r in rules] == ["443"]
    assert all("google_compute_target_https_proxy" in json.dumps(r.body) for r in rules)
    assert not tf.of_type("google_compute_target_http_proxy")
    [policy] = tf.of_type("google_compute_ssl_policy")
    assert policy.body["min_tls_version"] == "TLS_1_2"
    [backend] = tf.of_type("google_compute_backend_service")
    assert backend.body["protocol"] == "HTTPS"
    assert "outlier_detection" in backend.body


def test_each_region_has_a_serverless_neg_for_the_vend_service(tf: Terraform) -> None:
    [neg] = tf.of_type("google_compute_region_network_endpoint_group")
    assert neg.body["network_endpoint_type"] == "SERVERLESS"
    assert "local.vend_regions" in str(neg.body["for_each"])
    assert _first(neg.body["cloud_run"])["service"] == "${var.name}-vend"
