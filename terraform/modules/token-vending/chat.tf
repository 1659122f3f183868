# Chat-ops apps (vending/chat/, docs/chatops.md): off unless chat_enabled.
#
#   chat_google_http  HTTP: Google Chat interactions (Chat's bearer token verified in code)
#   chat_slack_http   HTTP: Slack interactivity (v0 request signature verified in code)
#   chat_notify       CloudEvent: the notifications topic -> cards, refusals, break-glass alerts
#
# Each runs as its own account, holding only what it needs:
#   - the two apps: iam.serviceAccounts.signJwt on the chat bot account alone (the module's
#     one-permission bot signer role), roles/pubsub.publisher on the approvals topic; nobody
#     else gets signJwt on the bot but the bot itself. No role on any target account.
#   - Firestore: the apps' own records (replays, cards, handled events) live in a database of
#     their own (roles/datastore.user conditioned to it); the access requests are only read
#     (roles/datastore.viewer conditioned to the service's database) by the Google Chat app (the
#     card it answers with) and the notifier.
#   - Secret Manager: the Slack signing secret (Slack app) and bot token (Slack app, notifier),
#     read at instance start as secret environment variables; their values are added by the
#     operator (`gcloud secrets versions add`), never through Terraform, so they are not in state.
#   - VENDING_SESSION_KEY: vending/config.py requires one outside the event entry points, though
#     the chat functions serve no console. They get a placeholder of their own, which signs
#     nothing the service accepts (never the console's key, which only vend_http reads).

variable "chat_enabled" {
  description = "Deploy the chat-ops apps (Google Chat and, with chat_slack_enabled, Slack) and their notifier."
  type        = bool
  default     = false
}

variable "chat_google_project_number" {
  description = "Audience of Google Chat's bearer tokens: the number of the project the Chat app is configured in. null: var.project's number."
  type        = string
  default     = null
}

variable "chat_google_alerts_space" {
  description = "Google Chat space (spaces/...) for break-glass alerts; null: none."
  type        = string
  default     = null
}

variable "chat_google_users" {
  description = "Google Chat users/ID -> identity, consulted before the event's email."
  type        = map(string)
  default     = {}
}

variable "chat_slack_enabled" {
  description = "Deploy the Slack app (needs the two Slack secrets' values added, see docs/chatops.md)."
  type        = bool
  default     = false
}

variable "chat_slack_alerts_channel" {
  description = "Slack channel id for break-glass alerts; null: none."
  type        = string
  default     = null
}

variable "chat_slack_users" {
  description = "Slack user id -> identity, consulted before the email Slack verified."
  type        = map(string)
  default     = {}
}

variable "chat_bot_service_account" {
  description = "The policy bot the chat apps sign as. null: the policy's first bot."
  type        = string
  default     = null
}

variable "chat_max_instances" {
  description = "Maximum instances of each chat function."
  type        = number
  default     = 3
}

locals {
  chat_count    = var.chat_enabled ? 1 : 0
  chat_bot      = coalesce(var.chat_bot_service_account, try(local.policy_bots[0].service_account, "no-bot-in-policy"))
  chat_database = "${local.firestore_database}-chat"
  chat_apps     = var.chat_enabled ? (var.chat_slack_enabled ? toset(["google", "slack"]) : toset(["google"])) : toset([])
  chat_members = var.chat_enabled ? merge(
    { google = "serviceAccount:${google_service_account.chat_google[0].email}" },
    { notify = "serviceAccount:${google_service_account.chat_notify[0].email}" },
    var.chat_slack_enabled ? { slack = "serviceAccount:${google_service_account.chat_slack[0].email}" } : {},
  ) : {}
  chat_signer_role = coalesce(var.bot_signer_role, try(google_project_iam_custom_role.bot_signer[0].name, "no-bot-signer-role"))
  chat_collections = ["chat_replays", "chat_cards", "chat_events"]
  chat_slack_secrets = {
    CHATOPS_SLACK_SIGNING_SECRET = try(google_secret_manager_secret.chat_slack_signing_secret[0].secret_id, null)
    CHATOPS_SLACK_BOT_TOKEN      = try(google_secret_manager_secret.chat_slack_bot_token[0].secret_id, null)
  }
}

# --- accounts ------------------------------------------------------------------

resource "google_service_account" "chat_google" {
  count        = local.chat_count
  project      = var.project
  account_id   = "${var.name}-chat-google"
  display_name = "Token vending Google Chat app"
  description  = "Verifies Google Chat clicks; signs approvals as the chat bot (signJwt) and publishes them."
}

resource "google_service_account" "chat_slack" {
  count        = var.chat_enabled && var.chat_slack_enabled ? 1 : 0
  project      = var.project
  account_id   = "${var.name}-chat-slack"
  display_name = "Token vending Slack app"
  description  = "Verifies Slack clicks; signs approvals as the chat bot (signJwt) and publishes them."
}

resource "google_service_account" "chat_notify" {
  count        = local.chat_count
  project      = var.project
  account_id   = "${var.name}-chat-notify"
  display_name = "Token vending chat notifier"
  description  = "Posts and updates approval cards in Google Chat and Slack from the notifications topic."
}

# --- grants --------------------------------------------------------------------

# The apps' only power: have the bot's account sign an approval (signJwt, nothing else).
resource "google_service_account_iam_member" "chat_apps_sign_as_bot" {
  for_each = local.chat_apps

  service_account_id = "projects/${try(regex("^[^@]+@([a-z0-9-]+)\\.iam\\.gserviceaccount\\.com$", local.chat_bot)[0], var.project)}/serviceAccounts/${local.chat_bot}"
  role               = local.chat_signer_role
  member             = local.chat_members[each.value]

  lifecycle {
    precondition {
      condition     = local.chat_bot != "no-bot-in-policy" && local.chat_signer_role != "no-bot-signer-role"
      error_message = "chat_enabled needs a bot in the policy (or chat_bot_service_account) and the bot signer role (bot_self_signing = true, or bot_signer_role)."
    }
  }
}

resource "google_pubsub_topic_iam_member" "chat_apps_publish_approvals" {
  for_each = local.chat_apps

  project = var.project
  topic   = google_pubsub_topic.approvals.name
  role    = "roles/pubsub.publisher"
  member  = local.chat_members[each.value]
}

# The access requests, read only: the Google Chat app (its answer is the updated card) and the notifier.
resource "google_project_iam_member" "chat_reads_requests" {
  for_each = var.chat_enabled ? toset(["google", "notify"]) : toset([])

  project = var.project
  role    = "roles/datastore.viewer"
  member  = local.chat_members[each.value]

  condition {
    title       = "chat-reads-${local.firestore_database}"
    description = "Read only, and only the token vending database."
    expression  = "resource.name == \"projects/${var.project}/databases/${local.firestore_database}\""
  }
}

# The apps' own records, in their own database.
resource "google_project_iam_member" "chat_writes_own_records" {
  for_each = local.chat_members

  project = var.project
  role    = "roles/datastore.user"
  member  = each.value

  condition {
    title       = "only-database-${local.chat_database}"
    description = "Firestore access limited to the chat apps' own database."
    expression  = "resource.name == \"projects/${var.project}/databases/${local.chat_database}\""
  }
}

resource "google_firestore_database" "chat" {
  count = local.chat_count

  project                 = var.project
  name                    = local.chat_database
  location_id             = local.firestore_location
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = "DELETE_PROTECTION_DISABLED"
  deletion_policy         = "DELETE"

  depends_on = [google_project_service.apis]
}

resource "google_firestore_field" "chat_purge_at_ttl" {
  for_each = var.chat_enabled ? toset(local.chat_collections) : toset([])

  project    = var.project
  database   = google_firestore_database.chat[0].name
  collection = each.value
  field      = "purge_at"

  ttl_config {}
  index_config {}
}

# --- secrets -------------------------------------------------------------------

resource "google_secret_manager_secret" "chat_slack_signing_secret" {
  count     = var.chat_enabled && var.chat_slack_enabled ? 1 : 0
  project   = var.project
  secret_id = "${var.name}-slack-signing-secret"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "chat_slack_bot_token" {
  count     = var.chat_enabled && var.chat_slack_enabled ? 1 : 0
  project   = var.project
  secret_id = "${var.name}-slack-bot-token"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_iam_member" "chat_slack_reads_signing_secret" {
  count     = var.chat_enabled && var.chat_slack_enabled ? 1 : 0
  project   = var.project
  secret_id = google_secret_manager_secret.chat_slack_signing_secret[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.chat_members["slack"]
}

resource "google_secret_manager_secret_iam_member" "chat_reads_slack_bot_token" {
  for_each = var.chat_enabled && var.chat_slack_enabled ? toset(["slack", "notify"]) : toset([])

  project   = var.project
  secret_id = google_secret_manager_secret.chat_slack_bot_token[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.chat_members[each.value]
}

resource "random_password" "chat_session_placeholder" {
  count   = local.chat_count
  length  = 64
  special = false
}

resource "google_secret_manager_secret" "chat_session_placeholder" {
  count     = local.chat_count
  project   = var.project
  secret_id = "${var.name}-chat-session-placeholder"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "chat_session_placeholder" {
  count       = local.chat_count
  secret      = google_secret_manager_secret.chat_session_placeholder[0].id
  secret_data = random_password.chat_session_placeholder[0].result
}

resource "google_secret_manager_secret_iam_member" "chat_reads_session_placeholder" {
  for_each = local.chat_members

  project   = var.project
  secret_id = google_secret_manager_secret.chat_session_placeholder[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value
}

# --- functions -----------------------------------------------------------------

resource "google_cloudfunctions2_function" "chat_google_http" {
  count       = local.chat_count
  project     = var.project
  location    = var.region
  name        = "${var.name}-chat-google"
  description = "Token vending: Google Chat approval app (interactions)."
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = "chat_google_http"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = "256M"
    timeout_seconds                = 30
    max_instance_count             = var.chat_max_instances
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.chat_google[0].email
    environment_variables = merge(local.environment, {
      VENDING_ENTRY_POINT         = "chat_google_http"
      CHATOPS_APPROVALS_TOPIC     = google_pubsub_topic.approvals.id
      CHATOPS_BOT_SERVICE_ACCOUNT = local.chat_bot
      CHATOPS_STORE               = "firestore:${local.chat_database}"
      CHATOPS_GOOGLE_AUDIENCE     = coalesce(var.chat_google_project_number, data.google_project.this.number)
      CHATOPS_GOOGLE_USERS        = jsonencode(var.chat_google_users)
    })
    secret_environment_variables {
      key        = "VENDING_SESSION_KEY"
      project_id = var.project
      secret     = google_secret_manager_secret.chat_session_placeholder[0].secret_id
      version    = google_secret_manager_secret_version.chat_session_placeholder[0].version
    }
    # Google Chat calls it from the internet; every request's bearer token is verified in code.
    ingress_settings = "ALLOW_ALL"
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloudfunctions2_function" "chat_slack_http" {
  count       = var.chat_enabled && var.chat_slack_enabled ? 1 : 0
  project     = var.project
  location    = var.region
  name        = "${var.name}-chat-slack"
  description = "Token vending: Slack approval app (interactivity)."
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = "chat_slack_http"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = "256M"
    timeout_seconds                = 30
    max_instance_count             = var.chat_max_instances
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.chat_slack[0].email
    environment_variables = merge(local.environment, {
      VENDING_ENTRY_POINT         = "chat_slack_http"
      CHATOPS_APPROVALS_TOPIC     = google_pubsub_topic.approvals.id
      CHATOPS_BOT_SERVICE_ACCOUNT = local.chat_bot
      CHATOPS_STORE               = "firestore:${local.chat_database}"
      CHATOPS_SLACK_USERS         = jsonencode(var.chat_slack_users)
    })
    secret_environment_variables {
      key        = "VENDING_SESSION_KEY"
      project_id = var.project
      secret     = google_secret_manager_secret.chat_session_placeholder[0].secret_id
      version    = google_secret_manager_secret_version.chat_session_placeholder[0].version
    }
    dynamic "secret_environment_variables" {
      for_each = local.chat_slack_secrets
      content {
        key        = secret_environment_variables.key
        project_id = var.project
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
    # Slack calls it from the internet; every request's signature is verified in code.
    ingress_settings = "ALLOW_ALL"
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloudfunctions2_function" "chat_notify" {
  count       = local.chat_count
  project     = var.project
  location    = var.region
  name        = "${var.name}-chat-notify"
  description = "Token vending: chat-ops cards and alerts from the notifications topic."
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = "chat_notify"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id
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
    max_instance_count             = var.chat_max_instances
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.chat_notify[0].email
    environment_variables = merge(local.environment, {
      VENDING_ENTRY_POINT          = "chat_notify"
      CHATOPS_BOT_SERVICE_ACCOUNT  = local.chat_bot
      CHATOPS_STORE                = "firestore:${local.chat_database}"
      CHATOPS_GOOGLE_AUDIENCE      = coalesce(var.chat_google_project_number, data.google_project.this.number)
      CHATOPS_GOOGLE_ALERTS_SPACE  = var.chat_google_alerts_space == null ? "" : var.chat_google_alerts_space
      CHATOPS_SLACK_ALERTS_CHANNEL = var.chat_slack_alerts_channel == null ? "" : var.chat_slack_alerts_channel
      CHATOPS_SLACK_USERS          = jsonencode(var.chat_slack_users)
    })
    secret_environment_variables {
      key        = "VENDING_SESSION_KEY"
      project_id = var.project
      secret     = google_secret_manager_secret.chat_session_placeholder[0].secret_id
      version    = google_secret_manager_secret_version.chat_session_placeholder[0].version
    }
    dynamic "secret_environment_variables" {
      for_each = var.chat_slack_enabled ? { CHATOPS_SLACK_BOT_TOKEN = local.chat_slack_secrets.CHATOPS_SLACK_BOT_TOKEN } : {}
      content {
        key        = secret_environment_variables.key
        project_id = var.project
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
    # Only Eventarc (Pub/Sub push, inside the project) calls it.
    ingress_settings = "ALLOW_INTERNAL_ONLY"
  }

  event_trigger {
    trigger_region = var.region
    event_type     = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic   = google_pubsub_topic.notifications.id
    # The notifier acknowledges what it cannot use and raises only on transient failures.
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.trigger.email
  }

  depends_on = [google_project_service.apis]
}

# --- invokers ------------------------------------------------------------------

# The chat platforms reach the two apps from the internet, with no Google identity Cloud Run
# could check (Slack), or one the app verifies itself (Chat's project-number token).
resource "google_cloud_run_service_iam_member" "chat_google_http_public" {
  count    = local.chat_count
  project  = var.project
  location = google_cloudfunctions2_function.chat_google_http[0].location
  service  = google_cloudfunctions2_function.chat_google_http[0].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_service_iam_member" "chat_slack_http_public" {
  count    = var.chat_enabled && var.chat_slack_enabled ? 1 : 0
  project  = var.project
  location = google_cloudfunctions2_function.chat_slack_http[0].location
  service  = google_cloudfunctions2_function.chat_slack_http[0].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_service_iam_member" "chat_notify_invoker" {
  count    = local.chat_count
  project  = var.project
  location = google_cloudfunctions2_function.chat_notify[0].location
  service  = google_cloudfunctions2_function.chat_notify[0].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.trigger.email}"
}

# --- outputs -------------------------------------------------------------------

output "chat_google_url" {
  description = "The Google Chat app's HTTP endpoint URL (Chat API configuration)."
  value       = try(google_cloudfunctions2_function.chat_google_http[0].service_config[0].uri, null)
}

output "chat_slack_url" {
  description = "The Slack app's Interactivity Request URL."
  value       = try(google_cloudfunctions2_function.chat_slack_http[0].service_config[0].uri, null)
}

output "chat_service_accounts" {
  description = "The chat functions' runtime accounts."
  value       = { for k, m in local.chat_members : k => trimprefix(m, "serviceAccount:") }
}

output "chat_slack_secrets" {
  description = "Secret Manager secrets to add the Slack signing secret and bot token to (gcloud secrets versions add)."
  value       = local.chat_slack_secrets
}
