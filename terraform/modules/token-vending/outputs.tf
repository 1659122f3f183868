output "function_url" {
  description = "HTTPS endpoint of vend_http (POST /v1/access-tokens)."
  value       = google_cloudfunctions2_function.vend_http.service_config[0].uri
}

output "runtime_service_account_email" {
  description = "The service's own identity: grant it nothing by hand, use the policy file."
  value       = google_service_account.runtime.email
}

output "function_service_accounts" {
  description = "One runtime account per function: only vend holds Token Creator (and the session key)."
  value = {
    vend   = google_service_account.runtime.email
    events = google_service_account.events.email
    sweep  = google_service_account.sweep.email
  }
}

output "build_service_account_email" {
  description = "Cloud Build's identity for the function builds."
  value       = google_service_account.build.email
}

output "bot_service_accounts" {
  description = "Bots allowed to publish on the approvals topic and to sign as themselves (signJwt)."
  value       = sort(tolist(local.bot_service_accounts))
}

output "trigger_service_account_email" {
  description = "Identity Eventarc uses to invoke the event functions."
  value       = google_service_account.trigger.email
}

output "topics" {
  description = "Full topic names (projects/P/topics/T)."
  value = {
    approvals     = google_pubsub_topic.approvals.id
    notifications = google_pubsub_topic.notifications.id
    alerts        = google_pubsub_topic.alerts.id
    sweep         = google_pubsub_topic.sweep.id
    dead_letter   = google_pubsub_topic.dead_letter.id
  }
}

output "approvals_topic" {
  description = "Bots publish signed messages here."
  value       = google_pubsub_topic.approvals.id
}

output "notifications_topic" {
  value = google_pubsub_topic.notifications.id
}

output "alerts_topic" {
  value = google_pubsub_topic.alerts.id
}

output "sweep_topic" {
  value = google_pubsub_topic.sweep.id
}

output "dead_letter_topic" {
  value = google_pubsub_topic.dead_letter.id
}

output "event_subscriptions" {
  description = "Pull subscriptions for the chat-ops bots (with dead-lettering)."
  value = {
    notifications = google_pubsub_subscription.events["notifications"].id
    alerts        = google_pubsub_subscription.events["alerts"].id
    dead_letter   = google_pubsub_subscription.dead_letter.id
  }
}

output "approvals_trigger" {
  description = "Eventarc trigger feeding handle_pubsub (its subscription takes the dead-letter policy, see README)."
  value       = google_cloudfunctions2_function.handle_pubsub.event_trigger[0].trigger
}

output "firestore_database" {
  value = google_firestore_database.this.name
}

output "token_creator_targets" {
  description = "Service accounts the runtime account holds Token Creator on, derived from the policy."
  value       = sort(tolist(local.token_creator_targets))
}

output "kill_switch_targets" {
  description = "Service accounts whose kill switch the runtime account may engage (disable, enable, get), from the policy."
  value       = sort(tolist(local.kill_switch_targets))
}

output "kill_switch_role" {
  description = "The role bound to the runtime account on each kill switch target."
  value       = coalesce(var.kill_switch_role, try(google_project_iam_custom_role.kill_switch[0].name, null))
}

output "lifetime_extension_entitlements" {
  description = "Entitlements that need constraints/iam.allowServiceAccountCredentialLifetimeExtension (tokens over 1 h)."
  value       = local.extended_lifetime_entitlements
}

output "vend_regions" {
  description = "Regions where vend_http runs."
  value       = local.vend_regions
}

output "load_balancer_ip" {
  description = "The load balancer's global IP address (point load_balancer_domains at it), or null."
  value       = local.load_balancer ? google_compute_global_address.vend[0].address : null
}

output "service_url" {
  description = "The URL callers use: the load balancer's first domain when there is one, else function_url."
  value       = local.load_balancer ? "https://${var.load_balancer_domains[0]}" : google_cloudfunctions2_function.vend_http.service_config[0].uri
}
