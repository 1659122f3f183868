# The expiry sweep: Cloud Scheduler publishes a tick to the sweep topic, whose
# Eventarc trigger runs sweep_expired. Sweeps are idempotent, so a late or
# doubled tick is harmless.

resource "google_cloud_scheduler_job" "sweep" {
  project     = var.project
  region      = var.region
  name        = "${var.name}-sweep"
  description = "Token vending: mark expired credentials and requests, reconcile reservations."
  schedule    = var.sweep_schedule
  time_zone   = var.sweep_time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.sweep.id
    data       = base64encode(jsonencode({ action = "sweep" }))
  }

  depends_on = [google_project_service.apis]
}
