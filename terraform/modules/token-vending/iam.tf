# Identities and grants: one runtime account per function, each with only what
# its function does.
#
# runtime (vend_http: the HTTP API, the console, the kill switch over HTTP):
#   - roles/datastore.user on the project, conditioned to its own database
#     (Firestore has no per-database IAM resource; a project binding with an
#     IAM condition is the narrowest grant there is);
#   - roles/pubsub.publisher on its own notifications and alerts topics;
#   - roles/iam.serviceAccountTokenCreator on each service account the policy
#     lets it impersonate, one binding per account, never on the project (the
#     only account of the module that holds Token Creator on a target);
#   - the kill switch role (iam.serviceAccounts.disable, .enable and .get only)
#     on each target account of the policy, one binding per account;
#   - secretAccessor on the console session key (console.tf).
# events (handle_pubsub: signed bot messages): the database and the two topics;
#   the kill switch role on the targets only when a bot of the policy may send
#   `disable`. No Token Creator: it never mints a credential.
# sweep (sweep_expired): the database and the two topics. Nothing else.
# trigger (Eventarc): roles/run.invoker on the two event functions only.
# build (Cloud Build for the three functions): writes logs and its own Artifact
#   Registry repository, reads the source bucket.
# Bots (inputs): publish on the approvals topic; signJwt on their own account.
# No primitive role, nothing else project-wide.

resource "google_service_account" "runtime" {
  project      = var.project
  account_id   = "${var.name}-runtime"
  display_name = "Token vending runtime"
  description  = "Runs the token vending functions; impersonates only the policy's target accounts."
}

resource "google_service_account" "events" {
  project      = var.project
  account_id   = "${var.name}-events"
  display_name = "Token vending approvals handler"
  description  = "Runs handle_pubsub (signed bot messages); mints no credential."
}

resource "google_service_account" "sweep" {
  project      = var.project
  account_id   = "${var.name}-sweep"
  display_name = "Token vending expiry sweep"
  description  = "Runs sweep_expired; reads and updates the ledger only."
}

# Cloud Build's identity for the three function builds (instead of the project's
# default build account, which often holds Editor).
resource "google_service_account" "build" {
  project      = var.project
  account_id   = "${var.name}-build"
  display_name = "Token vending function builds"
  description  = "Builds the token vending functions: reads the source bucket, writes its image repository and logs."
}

# Identity of the Eventarc triggers: may invoke the two event functions, nothing else.
resource "google_service_account" "trigger" {
  project      = var.project
  account_id   = "${var.name}-trigger"
  display_name = "Token vending event triggers"
  description  = "Eventarc push identity for handle_pubsub and sweep_expired."
}

locals {
  runtime_member = "serviceAccount:${google_service_account.runtime.email}"
  # The accounts of the functions that read and write the ledger and publish events.
  function_members = {
    runtime = "serviceAccount:${google_service_account.runtime.email}"
    events  = "serviceAccount:${google_service_account.events.email}"
    sweep   = "serviceAccount:${google_service_account.sweep.email}"
  }
  # The event functions' publish grants (the runtime account's are the two resources below).
  event_function_publishes = {
    for pair in setproduct(["events", "sweep"], ["notifications", "alerts"]) : "${pair[0]}:${pair[1]}" => {
      member = local.function_members[pair[0]]
      topic  = pair[1] == "notifications" ? google_pubsub_topic.notifications.name : google_pubsub_topic.alerts.name
    }
  }

  # Chat-ops bots (policy `bots`): handle_pubsub engages a kill switch only for a bot
  # whose actions list `disable`, so only then does its account get the kill switch role.
  policy_bots = [
    for b in try(local.policy.bots, []) : {
      service_account = b.service_account
      actions         = try(b.actions, ["request", "approve", "deny", "revoke"])
    }
  ]
  bots_may_disable = anytrue([for b in local.policy_bots : contains(b.actions, "disable")])
  # Bots that publish signed messages to the approvals topic and sign them with their own
  # account (IAM signJwt): the input, or by default the policy's bots.
  bot_service_accounts = toset(coalesce(var.bot_service_accounts, [for b in local.policy_bots : b.service_account]))

  # Who the runtime account calls generateAccessToken on directly: the target,
  # or the first delegate when the entitlement has a delegation chain (IAM then
  # checks each hop of the chain, not the caller's access to the target).
  token_creator_targets = toset(concat(
    [for e in local.entitlements : length(e.delegates) > 0 ? e.delegates[0] : e.service_account],
    var.extra_target_service_accounts,
  ))

  # Each hop of a chain: delegate[i] -> delegate[i + 1], last delegate -> target.
  delegation_hops = {
    for key, hops in {
      for h in flatten([
        for e in local.entitlements : [
          for i, d in e.delegates : { from = d, to = concat(e.delegates, [e.service_account])[i + 1] }
        ]
      ]) : "${h.from}>${h.to}" => h...
    } : key => hops[0]
  }

  # Whose kill switch the service may engage: the accounts it vends credentials of
  # (vending/config.py Policy.target_service_accounts), never a delegate hop.
  kill_switch_targets = toset([for e in local.entitlements : e.service_account])

  # projects/PROJECT/serviceAccounts/EMAIL for a user-managed account's email.
  sa_project = {
    for email in setunion(local.token_creator_targets, toset([for h in values(local.delegation_hops) : h.to]), local.kill_switch_targets) :
    email => try(regex("^[^@]+@([a-z0-9-]+)\\.iam\\.gserviceaccount\\.com$", email)[0], var.project)
  }

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_project_iam_member" "runtime_datastore_user" {
  project = var.project
  role    = "roles/datastore.user"
  member  = local.runtime_member

  condition {
    title       = "only-database-${local.firestore_database}"
    description = "Firestore access limited to the token vending database."
    expression  = "resource.name == \"projects/${var.project}/databases/${local.firestore_database}\""
  }
}

resource "google_project_iam_member" "events_datastore_user" {
  project = var.project
  role    = "roles/datastore.user"
  member  = local.function_members.events

  condition {
    title       = "only-database-${local.firestore_database}"
    description = "Firestore access limited to the token vending database."
    expression  = "resource.name == \"projects/${var.project}/databases/${local.firestore_database}\""
  }
}

resource "google_project_iam_member" "sweep_datastore_user" {
  project = var.project
  role    = "roles/datastore.user"
  member  = local.function_members.sweep

  condition {
    title       = "only-database-${local.firestore_database}"
    description = "Firestore access limited to the token vending database."
    expression  = "resource.name == \"projects/${var.project}/databases/${local.firestore_database}\""
  }
}

resource "google_pubsub_topic_iam_member" "event_functions_publish" {
  for_each = local.event_function_publishes

  project = var.project
  topic   = each.value.topic
  role    = "roles/pubsub.publisher"
  member  = each.value.member
}

resource "google_pubsub_topic_iam_member" "runtime_publishes_notifications" {
  project = var.project
  topic   = google_pubsub_topic.notifications.name
  role    = "roles/pubsub.publisher"
  member  = local.runtime_member
}

resource "google_pubsub_topic_iam_member" "runtime_publishes_alerts" {
  project = var.project
  topic   = google_pubsub_topic.alerts.name
  role    = "roles/pubsub.publisher"
  member  = local.runtime_member
}

# One binding per target account, derived from the policy file: adding an
# entitlement and re-applying is how a new target is granted.
resource "google_service_account_iam_member" "runtime_token_creator" {
  for_each = local.token_creator_targets

  service_account_id = "projects/${local.sa_project[each.value]}/serviceAccounts/${each.value}"
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.runtime_member
}

# The kill switch (POST /v1/service-accounts/EMAIL:disable): a custom role with exactly
# the three permissions it uses, bound on each target account, never project-wide.
resource "google_project_iam_custom_role" "kill_switch" {
  count = var.kill_switch_role == null ? 1 : 0

  project     = var.project
  role_id     = "${replace(var.name, "-", "_")}_kill_switch"
  title       = "Token vending kill switch"
  description = "Disable, enable and read the target service accounts of the token vending service."
  permissions = [
    "iam.serviceAccounts.disable",
    "iam.serviceAccounts.enable",
    "iam.serviceAccounts.get",
  ]
}

resource "google_service_account_iam_member" "runtime_kill_switch" {
  for_each = local.kill_switch_targets

  service_account_id = "projects/${local.sa_project[each.value]}/serviceAccounts/${each.value}"
  role               = coalesce(var.kill_switch_role, try(google_project_iam_custom_role.kill_switch[0].name, null))
  member             = local.runtime_member
}

# handle_pubsub engages a kill switch for a bot whose actions list `disable`: the same
# role on the same targets, only when the policy has such a bot.
resource "google_service_account_iam_member" "events_kill_switch" {
  for_each = local.bots_may_disable ? local.kill_switch_targets : toset([])

  service_account_id = "projects/${local.sa_project[each.value]}/serviceAccounts/${each.value}"
  role               = coalesce(var.kill_switch_role, try(google_project_iam_custom_role.kill_switch[0].name, null))
  member             = local.function_members.events
}

resource "google_service_account_iam_member" "delegation_hop" {
  for_each = var.manage_delegation_grants ? local.delegation_hops : {}

  service_account_id = "projects/${local.sa_project[each.value.to]}/serviceAccounts/${each.value.to}"
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${each.value.from}"
}

# --- invokers -----------------------------------------------------------------

# allUsers may *reach* vend_http: CI outside Google Cloud has no Google identity
# to present to Cloud Run. The function authenticates every request itself
# (pinned OIDC issuers, audience, signature, replay) and denies by default.
# This is the only public binding of the module.
resource "google_cloud_run_service_iam_member" "vend_http_public" {
  project  = var.project
  location = google_cloudfunctions2_function.vend_http.location
  service  = google_cloudfunctions2_function.vend_http.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_service_iam_member" "handle_pubsub_invoker" {
  project  = var.project
  location = google_cloudfunctions2_function.handle_pubsub.location
  service  = google_cloudfunctions2_function.handle_pubsub.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.trigger.email}"
}

resource "google_cloud_run_service_iam_member" "sweep_expired_invoker" {
  project  = var.project
  location = google_cloudfunctions2_function.sweep_expired.location
  service  = google_cloudfunctions2_function.sweep_expired.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.trigger.email}"
}

# Pub/Sub signs the push requests' OIDC tokens as the trigger account (needed
# for projects whose Pub/Sub agent predates April 2021), on that account only.
resource "google_service_account_iam_member" "pubsub_agent_mints_trigger_tokens" {
  service_account_id = google_service_account.trigger.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# --- chat-ops bots -------------------------------------------------------------

# A bot publishes its signed messages to the approvals topic...
resource "google_pubsub_topic_iam_member" "bot_publishes_approvals" {
  for_each = var.bot_publish ? local.bot_service_accounts : toset([])

  project = var.project
  topic   = google_pubsub_topic.approvals.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${each.value}"
}

# ...signed with its own account's key through IAM signJwt: a custom role with that one
# permission (Token Creator would also let it mint access tokens of itself), bound on
# the bot's own account only.
resource "google_project_iam_custom_role" "bot_signer" {
  count = var.bot_self_signing && var.bot_signer_role == null ? 1 : 0

  project     = var.project
  role_id     = "${replace(var.name, "-", "_")}_bot_signer"
  title       = "Token vending bot signer"
  description = "signJwt on a chat-ops bot's own service account, for its approval messages."
  permissions = ["iam.serviceAccounts.signJwt"]
}

resource "google_service_account_iam_member" "bot_signs_itself" {
  for_each = var.bot_self_signing ? local.bot_service_accounts : toset([])

  service_account_id = "projects/${try(regex("^[^@]+@([a-z0-9-]+)\\.iam\\.gserviceaccount\\.com$", each.value)[0], var.project)}/serviceAccounts/${each.value}"
  role               = coalesce(var.bot_signer_role, try(google_project_iam_custom_role.bot_signer[0].name, null))
  member             = "serviceAccount:${each.value}"
}

# --- builds ----------------------------------------------------------------------

# The functions' images go to a repository of the module, where only the build account writes:
# one per region a function runs in (a function's repository must be in its region).
resource "google_artifact_registry_repository" "functions" {
  for_each = toset(local.vend_regions)

  project       = var.project
  location      = each.value
  repository_id = "${var.name}-functions"
  description   = "Token vending function images (built by the module's build account)."
  format        = "DOCKER"
  labels        = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_artifact_registry_repository_iam_member" "build_writes_images" {
  for_each = google_artifact_registry_repository.functions

  project    = var.project
  location   = each.value.location
  repository = each.value.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.build.email}"
}

resource "google_storage_bucket_iam_member" "build_reads_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.build.email}"
}

resource "google_project_iam_member" "build_writes_logs" {
  project = var.project
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.build.email}"
}

# --- tracing (off by default) ----------------------------------------------------

resource "google_project_iam_member" "runtime_trace_agent" {
  count = var.tracing == "cloud-trace" ? 1 : 0

  project = var.project
  role    = "roles/cloudtrace.agent"
  member  = local.runtime_member
}
