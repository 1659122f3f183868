# Token vending service: three Cloud Functions (2nd gen) over one source archive.
#
#   vend_http      HTTP: POST /v1/access-tokens and the JSON API
#   handle_pubsub  CloudEvent: signed bot messages on the approvals topic
#   sweep_expired  CloudEvent: Cloud Scheduler -> sweep topic, every minute

data "google_project" "this" {
  project_id = var.project
}

locals {
  source_dir         = coalesce(var.source_dir, "${path.module}/../../..")
  firestore_database = coalesce(var.firestore_database, var.name)
  firestore_location = coalesce(var.firestore_location, var.region)

  # The policy file is the single source of truth for who may be impersonated.
  policy = yamldecode(file(var.config_path))
  entitlements = [
    for e in try(local.policy.entitlements, []) : {
      name               = e.name
      service_account    = e.service_account
      delegates          = [for d in try(e.delegates, []) : trimprefix(d, "projects/-/serviceAccounts/")]
      lifetime_extension = try(e.lifetime_extension, false)
    }
  ]
  extended_lifetime_entitlements = [for e in local.entitlements : e.name if e.lifetime_extension]

  # The file shipped as config/deployed.yaml: verbatim, or with the issuers replaced.
  deployed_config_path = "config/deployed.yaml"
  deployed_config      = var.issuers == null ? file(var.config_path) : yamlencode(merge(local.policy, { issuers = var.issuers }))

  # Exactly the variables vending/config.py reads (tests/terraform checks this
  # against config.py). VENDING_IAM_TOKEN and VENDING_EVENTS_FILE are for the
  # local stand-ins only and are never set here. VENDING_SESSION_KEY comes from
  # Secret Manager (secret_environment_variables in each function, console.tf).
  environment = {
    VENDING_STORE               = "firestore"
    VENDING_CONFIG              = local.deployed_config_path
    VENDING_PROJECT             = var.project
    VENDING_FIRESTORE_DATABASE  = local.firestore_database
    VENDING_IAM_ENDPOINT        = var.iam_endpoint
    VENDING_IAM_ADMIN_ENDPOINT  = var.iam_admin_endpoint
    VENDING_IAM_TIMEOUT         = tostring(var.iam_timeout_seconds)
    VENDING_IAM_RETRIES         = tostring(var.iam_retries)
    VENDING_KEYS_BASE_URL       = var.keys_base_url
    VENDING_NOTIFICATIONS_TOPIC = google_pubsub_topic.notifications.id
    VENDING_ALERTS_TOPIC        = google_pubsub_topic.alerts.id
    VENDING_RETENTION_DAYS      = tostring(var.retention_days)
    VENDING_RESERVATION_TIMEOUT = tostring(var.reservation_timeout_seconds)
    VENDING_LOG_LEVEL           = upper(var.log_level)
    VENDING_TRACING             = var.tracing
  }

  labels = merge({ app = "token-vending" }, var.labels)

  apis = toset([
    "artifactregistry.googleapis.com",
    "cloudtrace.googleapis.com",
    "compute.googleapis.com",
    "monitoring.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "apis" {
  for_each = var.enable_apis ? local.apis : toset([])

  project            = var.project
  service            = each.value
  disable_on_destroy = false
}

# --- function source -----------------------------------------------------------

locals {
  source_files = setsubtract(
    toset(flatten([for p in var.source_include : fileset(local.source_dir, p)])),
    toset(flatten([for p in var.source_exclude : fileset(local.source_dir, p)])),
  )
}

data "archive_file" "source" {
  type             = "zip"
  output_path      = "${path.root}/build/${var.name}-source.zip"
  output_file_mode = "0644"

  dynamic "source" {
    for_each = local.source_files
    content {
      filename = source.value
      content  = file("${local.source_dir}/${source.value}")
    }
  }

  # The policy travels with the code: VENDING_CONFIG=config/deployed.yaml.
  source {
    filename = local.deployed_config_path
    content  = local.deployed_config
  }
}

resource "google_storage_bucket" "source" {
  project                     = var.project
  name                        = coalesce(var.source_bucket_name, "${var.project}-${var.name}-source")
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.labels

  versioning {
    enabled = true
  }

  # Old archives are only needed for a rollback: keep the last few.
  lifecycle_rule {
    condition {
      num_newer_versions = 5
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_object" "source" {
  bucket = google_storage_bucket.source.name
  # Content-addressed: a change of code or policy redeploys the functions.
  name   = "${var.name}/source-${data.archive_file.source.output_sha256}.zip"
  source = data.archive_file.source.output_path
}

# --- functions -------------------------------------------------------------------

resource "google_cloudfunctions2_function" "vend_http" {
  project     = var.project
  location    = var.region
  name        = "${var.name}-vend"
  description = "Token vending: HTTP API (POST /v1/access-tokens, /v1/requests, /v1/issuances)."
  labels      = local.labels

  build_config {
    runtime     = "python311"
    entry_point = "vend_http"
    # Built by the module's build account into the module's repository (iam.tf).
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions[var.region].id
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory = "256M"
    # Concurrency (issue 18, `make bench`: vends per server CPU-second at 1, 8 and 32 concurrent
    # requests, bench/README.md). A vend mostly waits on IAM and Firestore; its CPU barely depends on
    # how many are in flight (four runs, Firestore: +12-33% vends per CPU-second from 1 to 8, -2% to
    # +11% from 8 to 32; SQLite: -1% to +15%, then -10% to -5%), while the latency at 32 is ~3.5-4x the
    # one at 8 (queueing behind the one worker's GIL); Google documents 8 as the Python runtime's limit.
    # Concurrency above 1 needs a whole vCPU. One gunicorn worker with one thread
    # per concurrent request (THREADS, WORKERS: functions-framework's settings) so no request waits
    # for a thread; peak RSS ~82 MiB for the worker plus ~48 MiB for the arbiter, inside 256M.
    available_cpu                    = "1"
    max_instance_request_concurrency = 8
    timeout_seconds                  = 60
    max_instance_count               = var.max_instances
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.runtime.email
    # PYDANTIC_DISABLE_PLUGINS: the service uses no pydantic plugin; without it every cold start
    # scans the installed distributions' entry points for one (~10-20 ms, bench/README.md).
    environment_variables = merge(local.environment, {
      VENDING_ENTRY_POINT      = "vend_http"
      THREADS                  = "8"
      WORKERS                  = "1"
      PYDANTIC_DISABLE_PLUGINS = "__all__"
    })
    # The key that signs web console sessions (vending/sessions.py), from Secret Manager (console.tf).
    secret_environment_variables {
      key        = "VENDING_SESSION_KEY"
      project_id = var.project
      secret     = google_secret_manager_secret.session_key.secret_id
      version    = google_secret_manager_secret_version.session_key.version
    }
    # ALLOW_ALL: CI jobs run outside Google Cloud (GitHub, GitLab) and must
    # reach the endpoint over the internet. That is safe because the service
    # authenticates every caller itself: a pinned-issuer OIDC token with this
    # service's audience on every request, deny by default.
    ingress_settings = "ALLOW_ALL"
  }

  lifecycle {
    precondition {
      condition     = var.lifetime_extension_allowed || length(local.extended_lifetime_entitlements) == 0
      error_message = "Entitlements ${join(", ", local.extended_lifetime_entitlements)} declare lifetime_extension (tokens over 1 h): configure the organization policy constraint constraints/iam.allowServiceAccountCredentialLifetimeExtension for their service accounts, then set lifetime_extension_allowed = true."
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloudfunctions2_function" "handle_pubsub" {
  project     = var.project
  location    = var.region
  name        = "${var.name}-pubsub"
  description = "Token vending: signed approval-bot messages from the approvals topic."
  labels      = local.labels

  build_config {
    runtime     = "python311"
    entry_point = "handle_pubsub"
    # Built by the module's build account into the module's repository (iam.tf).
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions[var.region].id
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = "256M"
    timeout_seconds                = 60
    max_instance_count             = var.event_max_instances
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.events.email
    # No console session key: an event function serves no console (VENDING_ENTRY_POINT).
    environment_variables = merge(local.environment, { VENDING_ENTRY_POINT = "handle_pubsub" })
    # Only Eventarc (Pub/Sub push, inside the project) calls it.
    ingress_settings = "ALLOW_INTERNAL_ONLY"
  }

  event_trigger {
    trigger_region = var.region
    event_type     = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic   = google_pubsub_topic.approvals.id
    # The function acknowledges permanent failures (forged, expired, malformed
    # messages) itself and raises only on transient ones, so retrying is right.
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.trigger.email
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloudfunctions2_function" "sweep_expired" {
  project     = var.project
  location    = var.region
  name        = "${var.name}-sweep"
  description = "Token vending: expiry sweep, every minute (Cloud Scheduler -> Pub/Sub)."
  labels      = local.labels

  build_config {
    runtime     = "python311"
    entry_point = "sweep_expired"
    # Built by the module's build account into the module's repository (iam.tf).
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions[var.region].id
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = "256M"
    timeout_seconds                = 120
    max_instance_count             = 1
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.sweep.email
    environment_variables          = merge(local.environment, { VENDING_ENTRY_POINT = "sweep_expired" })
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
  }

  event_trigger {
    trigger_region = var.region
    event_type     = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic   = google_pubsub_topic.sweep.id
    # The next tick sweeps again; retrying a failed sweep would only pile up.
    retry_policy          = "RETRY_POLICY_DO_NOT_RETRY"
    service_account_email = google_service_account.trigger.email
  }

  depends_on = [google_project_service.apis]
}
