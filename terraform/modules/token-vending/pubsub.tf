# Topics: approvals (bots publish signed messages), notifications (lifecycle
# events for chat), alerts (break-glass), sweep (scheduler ticks), and the
# dead-letter topic.
#
# Dead letters. handle_pubsub is fed by the subscription that the function's
# Eventarc trigger creates and owns; Terraform cannot attach a dead-letter
# policy to it (see README: one gcloud command does, with the grants below
# already in place). Its retries are bounded in time by that subscription's
# retention, and the function acknowledges every permanent failure itself.
# The subscriptions this module owns, those the chat bots pull events from,
# do carry a dead-letter policy with a bounded number of delivery attempts.

resource "google_pubsub_topic" "approvals" {
  project = var.project
  name    = "${var.name}-approvals"
  labels  = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "notifications" {
  project = var.project
  name    = "${var.name}-notifications"
  labels  = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "alerts" {
  project = var.project
  name    = "${var.name}-alerts"
  labels  = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "sweep" {
  project = var.project
  name    = "${var.name}-sweep"
  labels  = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  project = var.project
  name    = "${var.name}-dead-letter"
  labels  = local.labels

  depends_on = [google_project_service.apis]
}

# Chat-ops bots pull lifecycle events and alerts from these.
locals {
  event_topics = {
    notifications = google_pubsub_topic.notifications.id
    alerts        = google_pubsub_topic.alerts.id
  }
  # every (subscriber, subscription) pair a bot may pull from
  bot_pulls = {
    for pair in setproduct(var.event_subscribers, keys(local.event_topics)) :
    "${pair[1]}:${pair[0]}" => { member = pair[0], kind = pair[1] }
  }
}

resource "google_pubsub_subscription" "events" {
  for_each = local.event_topics

  project                    = var.project
  name                       = "${var.name}-${each.key}-bot"
  topic                      = each.value
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  labels                     = local.labels

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }
}

# Messages on a topic without a subscription are dropped: keep dead letters
# for a week so someone can look at them.
resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project
  name                       = "${var.name}-dead-letter-hold"
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false
  labels                     = local.labels

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription_iam_member" "bot_pulls" {
  for_each = local.bot_pulls

  project      = var.project
  subscription = google_pubsub_subscription.events[each.value.kind].name
  role         = "roles/pubsub.subscriber"
  member       = each.value.member
}

# Dead-lettering is done by the Pub/Sub service agent: it must publish to the
# dead-letter topic and acknowledge on the source subscriptions.
resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letters" {
  project = var.project
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_acks" {
  for_each = google_pubsub_subscription.events

  project      = var.project
  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
