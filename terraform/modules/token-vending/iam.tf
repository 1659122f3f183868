# Identities and grants. The runtime account holds exactly:
#   - roles/datastore.user on the project, conditioned to its own database
#     (Firestore has no per-database IAM resource; a project binding with an
#     IAM condition is the narrowest grant there is);
#   - roles/pubsub.publisher on its own notifications and alerts topics;
#   - roles/iam.serviceAccountTokenCreator on each service account the policy
#     lets it impersonate, one binding per account, never on the project;
#   - the kill switch role (iam.serviceAccounts.disable, .enable and .get only)
#     on each target account of the policy, one binding per account, never on
#     the project.
# No primitive role, nothing else project-wide.

resource "google_service_account" "runtime" {
  project      = var.project
  account_id   = "${var.name}-runtime"
  display_name = "Token vending runtime"
  description  = "Runs the token vending functions; impersonates only the policy's target accounts."
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
