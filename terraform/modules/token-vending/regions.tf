# Regions: vend_http in several regions behind one global external HTTPS load
# balancer (serverless NEGs). Off by default (one region, the function's own URL).
#
#   extra_vend_regions    = ["europe-west4"]          # vend_http also runs there
#   load_balancer_domains = ["vending.example.com"]   # one URL for every region
#   firestore_location    = "eur3"                    # a multi-region database
#
# What fails over and what does not is in terraform/README.md ("Several regions").

locals {
  vend_regions  = distinct(concat([var.region], var.extra_vend_regions))
  load_balancer = length(var.load_balancer_domains) > 0
  # Firestore multi-region locations (a regional database is lost with its region).
  firestore_multi_regions = ["nam5", "eur3"]
}

# The same function as vend_http (main.tf), in each extra region. Keep the two in step:
# tests/terraform/test_regions.py compares them.
resource "google_cloudfunctions2_function" "vend_http_regional" {
  for_each = toset(var.extra_vend_regions)

  project     = var.project
  location    = each.value
  name        = "${var.name}-vend"
  description = "Token vending: HTTP API (POST /v1/access-tokens, /v1/requests, /v1/issuances)."
  labels      = local.labels

  build_config {
    runtime     = "python311"
    entry_point = "vend_http"
    # Built by the module's build account into the module's repository of that region (iam.tf).
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions[each.value].id
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = "256M"
    available_cpu                    = "1"
    max_instance_request_concurrency = 8
    timeout_seconds                  = 60
    max_instance_count               = var.max_instances
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.runtime.email
    environment_variables = merge(local.environment, {
      VENDING_ENTRY_POINT      = "vend_http"
      THREADS                  = "8"
      WORKERS                  = "1"
      PYDANTIC_DISABLE_PLUGINS = "__all__"
    })
    secret_environment_variables {
      key        = "VENDING_SESSION_KEY"
      project_id = var.project
      secret     = google_secret_manager_secret.session_key.secret_id
      version    = google_secret_manager_secret_version.session_key.version
    }
    # As vend_http: CI outside Google Cloud calls it; the service authenticates every caller.
    ingress_settings = "ALLOW_ALL"
  }

  lifecycle {
    precondition {
      condition     = local.load_balancer
      error_message = "extra_vend_regions needs load_balancer_domains: callers use one URL (the load balancer's) for every region."
    }
    precondition {
      condition     = contains(local.firestore_multi_regions, local.firestore_location)
      error_message = "extra_vend_regions needs a multi-region Firestore location (firestore_location = \"nam5\" or \"eur3\"): with a regional database, losing its region stops every region's vends."
    }
    precondition {
      condition     = !contains(var.extra_vend_regions, var.region)
      error_message = "extra_vend_regions must not repeat region (vend_http already runs there)."
    }
  }

  depends_on = [google_project_service.apis]
}

# Public like vend_http, on the same service in each region (checkov-skips.yaml, CKV_GCP_102).
resource "google_cloud_run_service_iam_member" "vend_http_regional_public" {
  for_each = toset(var.extra_vend_regions)

  project  = var.project
  location = google_cloudfunctions2_function.vend_http_regional[each.key].location
  service  = google_cloudfunctions2_function.vend_http_regional[each.key].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# --- the global external HTTPS load balancer ---------------------------------------

# One serverless NEG per region: a Cloud Run function (2nd gen) is a Cloud Run service.
resource "google_compute_region_network_endpoint_group" "vend" {
  for_each = local.load_balancer ? toset(local.vend_regions) : toset([])

  project               = var.project
  name                  = "${var.name}-vend-${each.value}"
  region                = each.value
  network_endpoint_type = "SERVERLESS"

  cloud_run {
    service = "${var.name}-vend"
  }

  depends_on = [google_cloudfunctions2_function.vend_http, google_cloudfunctions2_function.vend_http_regional]
}

resource "google_compute_backend_service" "vend" {
  count = local.load_balancer ? 1 : 0

  project               = var.project
  name                  = "${var.name}-vend"
  description           = "vend_http in ${join(", ", local.vend_regions)}"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"
  security_policy       = var.load_balancer_security_policy

  dynamic "backend" {
    for_each = google_compute_region_network_endpoint_group.vend
    content {
      group = backend.value.id
    }
  }

  # Serverless NEGs have no health checks: outlier detection ejects a region whose
  # function keeps answering 5xx, so requests go to the next closest region.
  outlier_detection {
    consecutive_errors = 5
    interval {
      seconds = 10
    }
    base_ejection_time {
      seconds = 30
    }
    max_ejection_percent = 50
  }

  log_config {
    enable      = true
    sample_rate = 1
  }
}

resource "google_compute_url_map" "vend" {
  count = local.load_balancer ? 1 : 0

  project         = var.project
  name            = "${var.name}-vend"
  default_service = google_compute_backend_service.vend[0].id
}

resource "google_compute_managed_ssl_certificate" "vend" {
  count = local.load_balancer ? 1 : 0

  project = var.project
  name    = "${var.name}-vend"

  managed {
    domains = var.load_balancer_domains
  }
}

resource "google_compute_ssl_policy" "vend" {
  count = local.load_balancer ? 1 : 0

  project         = var.project
  name            = "${var.name}-vend"
  profile         = "RESTRICTED"
  min_tls_version = "TLS_1_2"
}

resource "google_compute_target_https_proxy" "vend" {
  count = local.load_balancer ? 1 : 0

  project          = var.project
  name             = "${var.name}-vend"
  url_map          = google_compute_url_map.vend[0].id
  ssl_certificates = [google_compute_managed_ssl_certificate.vend[0].id]
  ssl_policy       = google_compute_ssl_policy.vend[0].id
}

resource "google_compute_global_address" "vend" {
  count = local.load_balancer ? 1 : 0

  project = var.project
  name    = "${var.name}-vend"
}

# HTTPS only: no port 80 forwarding rule, so no token ever travels in clear.
resource "google_compute_global_forwarding_rule" "vend" {
  count = local.load_balancer ? 1 : 0

  project               = var.project
  name                  = "${var.name}-vend-https"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  ip_protocol           = "TCP"
  port_range            = "443"
  target                = google_compute_target_https_proxy.vend[0].id
  ip_address            = google_compute_global_address.vend[0].id
}
