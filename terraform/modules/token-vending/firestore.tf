# Firestore: the database, the composite indexes the queries need, and TTL.
#
# Collections are the kinds in vending/store/indexes.py. Every IndexShape there
# with equality fields plus a different order field is a composite index here
# (tests/terraform checks the two stay in step). Equality fields come first,
# ascending; then the order field: DESCENDING for the newest-first listings of
# GET /v1/issuances and GET /v1/requests, ASCENDING for the sweeps (due soonest
# first). Firestore appends __name__ in the direction of the last field, which
# matches the code's tie-break on the document id. Single-field shapes use the automatic indexes.

locals {
  firestore_collections = ["issuances", "requests", "replay", "uses", "kill_switches"]

  firestore_composite_indexes = {
    # sweep: active issuances due by expire_time
    issuances_state_expire_time_asc = {
      collection = "issuances"
      fields     = [["state", "ASCENDING"], ["expire_time", "ASCENDING"]]
    }
    # sweep: stale `issuing` reservations by created_at
    issuances_state_created_at_asc = {
      collection = "issuances"
      fields     = [["state", "ASCENDING"], ["created_at", "ASCENDING"]]
    }
    # GET /v1/issuances?state=..., newest first
    issuances_state_created_at_desc = {
      collection = "issuances"
      fields     = [["state", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    issuances_principal_created_at_desc = {
      collection = "issuances"
      fields     = [["principal", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    issuances_service_account_created_at_desc = {
      collection = "issuances"
      fields     = [["service_account", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    issuances_state_service_account_created_at_desc = {
      collection = "issuances"
      fields     = [["state", "ASCENDING"], ["service_account", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    issuances_state_principal_created_at_desc = {
      collection = "issuances"
      fields     = [["state", "ASCENDING"], ["principal", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    issuances_principal_service_account_created_at_desc = {
      collection = "issuances"
      fields     = [["principal", "ASCENDING"], ["service_account", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    issuances_state_principal_service_account_created_at_desc = {
      collection = "issuances"
      fields     = [["state", "ASCENDING"], ["principal", "ASCENDING"], ["service_account", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    # kill switch: an account's live (and revoked) credentials within their expiry
    issuances_state_service_account_expire_time_asc = {
      collection = "issuances"
      fields     = [["state", "ASCENDING"], ["service_account", "ASCENDING"], ["expire_time", "ASCENDING"]]
    }
    # sweep: requests waiting too long / past their window
    requests_state_expires_at_asc = {
      collection = "requests"
      fields     = [["state", "ASCENDING"], ["expires_at", "ASCENDING"]]
    }
    # GET /v1/requests, newest first: by state, requester, entitlement (an approver's) and their combinations
    requests_state_created_at_desc = {
      collection = "requests"
      fields     = [["state", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    requests_requester_created_at_desc = {
      collection = "requests"
      fields     = [["requester", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    requests_entitlement_created_at_desc = {
      collection = "requests"
      fields     = [["entitlement", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    requests_requester_state_created_at_desc = {
      collection = "requests"
      fields     = [["requester", "ASCENDING"], ["state", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    requests_entitlement_state_created_at_desc = {
      collection = "requests"
      fields     = [["entitlement", "ASCENDING"], ["state", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    requests_entitlement_requester_created_at_desc = {
      collection = "requests"
      fields     = [["entitlement", "ASCENDING"], ["requester", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
    requests_entitlement_requester_state_created_at_desc = {
      collection = "requests"
      fields     = [["entitlement", "ASCENDING"], ["requester", "ASCENDING"], ["state", "ASCENDING"], ["created_at", "DESCENDING"]]
    }
  }
}

resource "google_firestore_database" "this" {
  project                           = var.project
  name                              = local.firestore_database
  location_id                       = local.firestore_location
  type                              = "FIRESTORE_NATIVE"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  # terraform destroy leaves the ledger in place; delete it by hand if meant.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.apis]
}

resource "google_firestore_index" "composite" {
  for_each = local.firestore_composite_indexes

  project     = var.project
  database    = google_firestore_database.this.name
  collection  = each.value.collection
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value[0]
      order      = fields.value[1]
    }
  }
}

# TTL: Firestore deletes a document some time (typically within 24 h) after
# its purge_at (= expiry + retention_days). Expiry itself is decided in code.
resource "google_firestore_field" "purge_at_ttl" {
  for_each = toset(local.firestore_collections)

  project    = var.project
  database   = google_firestore_database.this.name
  collection = each.value
  field      = "purge_at"

  ttl_config {}

  # purge_at is never queried: no single-field indexes (a monotonically
  # increasing timestamp index would only add write cost and hotspots).
  index_config {}
}
