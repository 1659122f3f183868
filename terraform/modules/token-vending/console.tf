# The web console's session key (vending/sessions.py, docs/console.md).
#
# Every instance of the functions signs and checks console sessions with the
# same secret, VENDING_SESSION_KEY, which the service refuses to start without
# in production. It is generated here, kept in Secret Manager, and given to the
# functions as a secret environment variable; only the runtime account may read
# it. Rotating it (taint random_password.session_key, apply) signs everyone out.

resource "random_password" "session_key" {
  length  = 64
  special = false
}

resource "google_secret_manager_secret" "session_key" {
  project   = var.project
  secret_id = "${var.name}-session-key"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "session_key" {
  secret      = google_secret_manager_secret.session_key.id
  secret_data = random_password.session_key.result
}

resource "google_secret_manager_secret_iam_member" "runtime_session_key" {
  project   = var.project
  secret_id = google_secret_manager_secret.session_key.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.runtime.email}"
}
