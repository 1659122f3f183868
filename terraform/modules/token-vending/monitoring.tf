# Observability: log-based metrics from the service's JSON log lines, alert
# policies, and one Cloud Monitoring dashboard. Turn off with monitoring = false.
#
# What the code logs (vending/vend.py, vending/events.py, vending/sweep.py):
#   - one audit line per vend: jsonPayload.audit = true, .decision (allow|deny),
#     .reason (granted, scope-not-allowed, iam-error, ...), .kind, .status;
#   - every lifecycle event: jsonPayload.message = "event", .channel, .event.type
#     (break_glass.used, kill_switch.engaged, ...);
#   - the sweep: jsonPayload.message = "sweep summary" once per run, and one
#     warning per reservation it turns `unconfirmed`.
# Cloud Run functions log to resource.type = "cloud_run_revision", labelled with
# the function's service name.

locals {
  monitoring = var.monitoring ? 1 : 0
  # The functions this module deploys (every region's vend function shares one name).
  function_services = [
    google_cloudfunctions2_function.vend_http.name,
    google_cloudfunctions2_function.handle_pubsub.name,
    google_cloudfunctions2_function.sweep_expired.name,
  ]
  log_scope = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=(${join(" OR ", [for s in local.function_services : "\"${s}\""])})"

  # name => (filter, description, label extractors)
  log_metrics = {
    vends = {
      description = "Vend attempts, by decision (allow|deny), reason and credential kind."
      filter      = "${local.log_scope} AND jsonPayload.audit=true"
      labels = {
        decision = "EXTRACT(jsonPayload.decision)"
        reason   = "EXTRACT(jsonPayload.reason)"
        kind     = "EXTRACT(jsonPayload.kind)"
      }
    }
    break_glass_used = {
      description = "Break-glass credentials handed out (alerts channel: break_glass.used)."
      filter      = "${local.log_scope} AND jsonPayload.message=\"event\" AND jsonPayload.event.type=\"break_glass.used\""
      labels      = {}
    }
    kill_switch_engaged = {
      description = "Kill switches engaged (kill_switch.engaged)."
      filter      = "${local.log_scope} AND jsonPayload.message=\"event\" AND jsonPayload.event.type=\"kill_switch.engaged\""
      labels      = {}
    }
    iam_errors = {
      description = "Vends that failed at the IAM Credentials API (reasons iam-*), by reason."
      filter      = "${local.log_scope} AND jsonPayload.audit=true AND jsonPayload.reason=~\"^iam-\""
      labels = {
        reason = "EXTRACT(jsonPayload.reason)"
      }
    }
    unconfirmed = {
      description = "Issuances recorded `unconfirmed` (IAM gave no usable answer, or a reservation was never finalized): a credential may exist."
      filter      = "${local.log_scope} AND ((jsonPayload.audit=true AND jsonPayload.reason=(\"iam-bad-response\" OR \"iam-unavailable\")) OR jsonPayload.message=\"issuance reservation not finalized: a credential may exist until reserved_until\")"
      labels      = {}
    }
    sweep_runs = {
      description = "Completed expiry sweeps (one \"sweep summary\" line per run)."
      filter      = "${local.log_scope} AND jsonPayload.message=\"sweep summary\""
      labels      = {}
    }
  }
}

resource "google_logging_metric" "this" {
  for_each = var.monitoring ? local.log_metrics : {}

  project     = var.project
  name        = "${var.name}/${each.key}"
  description = each.value.description
  filter      = each.value.filter

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    dynamic "labels" {
      for_each = each.value.labels
      content {
        key         = labels.key
        value_type  = "STRING"
        description = "jsonPayload.${labels.key}"
      }
    }
  }

  label_extractors = each.value.labels

  depends_on = [google_project_service.apis]
}

locals {
  # The metric type of each log-based metric, for alert and dashboard filters.
  metric_type = { for k, m in google_logging_metric.this : k => "logging.googleapis.com/user/${m.name}" }

  # name => (display name, metric filter, threshold, documentation). An event that must
  # never go unnoticed alerts on its first occurrence.
  count_alerts = var.monitoring ? {
    break_glass_used = {
      display = "Token vending: break-glass used"
      metric  = "break_glass_used"
      above   = 0
      doc     = "A break-glass credential was handed out. Review the issuance (vending issuances --state active) and the incident it names."
    }
    kill_switch_engaged = {
      display = "Token vending: kill switch engaged"
      metric  = "kill_switch_engaged"
      above   = 0
      doc     = "A service account's kill switch was engaged (vending kill-switch status EMAIL). Every vend for it is refused until it is released."
    }
    iam_errors = {
      display = "Token vending: IAM Credentials API errors"
      metric  = "iam_errors"
      above   = var.alert_iam_errors_per_5m
      doc     = "Vends are failing at the IAM Credentials API (iam-error, iam-unavailable, iam-rate-limited, iam-permission-denied...). The reason label says which; iam-permission-denied means a Token Creator grant is missing."
    }
    unconfirmed = {
      display = "Token vending: unconfirmed issuances"
      metric  = "unconfirmed"
      above   = 0
      doc     = "IAM gave no usable answer, or a reservation was never finalized: a credential may exist without a confirmed record (vending issuances --state unconfirmed)."
    }
  } : {}
}

resource "google_monitoring_alert_policy" "log_counts" {
  for_each = local.count_alerts

  project               = var.project
  display_name          = each.value.display
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = each.value.display
    condition_threshold {
      filter          = "resource.type=\"cloud_run_revision\" AND metric.type=\"${local.metric_type[each.value.metric]}\""
      comparison      = "COMPARISON_GT"
      threshold_value = each.value.above
      duration        = "0s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    content   = each.value.doc
    mime_type = "text/markdown"
  }

  alert_strategy {
    auto_close = "1800s"
  }
}

# 5xx from the HTTP function: Cloud Run's own request metric (every region).
resource "google_monitoring_alert_policy" "http_5xx" {
  count = local.monitoring

  project               = var.project
  display_name          = "Token vending: 5xx responses"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "vend_http 5xx responses"
    condition_threshold {
      filter          = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloudfunctions2_function.vend_http.name}\" AND metric.type=\"run.googleapis.com/request_count\" AND metric.labels.response_code_class=\"5xx\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_5xx_per_5m
      duration        = "0s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    content   = "The HTTP function answered more than ${var.alert_5xx_per_5m} 5xx responses in 5 minutes (store or IAM unavailable, or a bug). GET /readyz says which dependency fails; the log's `vend failed` lines say why."
    mime_type = "text/markdown"
  }

  alert_strategy {
    auto_close = "1800s"
  }
}

# The sweep ticks every minute: no completed sweep for 10 minutes means expiry,
# reconciliation and replay clean-up have stopped.
resource "google_monitoring_alert_policy" "sweep_not_running" {
  count = local.monitoring

  project               = var.project
  display_name          = "Token vending: sweep not running"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "no sweep summary for 10 minutes"
    condition_absent {
      filter   = "resource.type=\"cloud_run_revision\" AND metric.type=\"${local.metric_type["sweep_runs"]}\""
      duration = "600s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    content   = "No expiry sweep completed for 10 minutes. Check the Cloud Scheduler job ${google_cloud_scheduler_job.sweep.name} and the sweep function's log."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_dashboard" "this" {
  count = local.monitoring

  project = var.project
  dashboard_json = jsonencode({
    displayName = "Token vending (${var.name})"
    mosaicLayout = {
      columns = 12
      tiles = [
        for i, tile in [
          { title = "Vends by decision", metric = local.metric_type["vends"], group = ["metric.label.decision"] },
          { title = "Refusals by reason", metric = local.metric_type["vends"], group = ["metric.label.reason"] },
          { title = "IAM errors by reason", metric = local.metric_type["iam_errors"], group = ["metric.label.reason"] },
          { title = "Unconfirmed issuances", metric = local.metric_type["unconfirmed"], group = [] },
          { title = "Break-glass used", metric = local.metric_type["break_glass_used"], group = [] },
          { title = "Kill switches engaged", metric = local.metric_type["kill_switch_engaged"], group = [] },
          { title = "Sweeps completed", metric = local.metric_type["sweep_runs"], group = [] },
          { title = "vend_http requests by response class", metric = "run.googleapis.com/request_count", group = ["metric.label.response_code_class"] },
          ] : {
          xPos   = (i % 2) * 6
          yPos   = floor(i / 2) * 4
          width  = 6
          height = 4
          widget = {
            title = tile.title
            xyChart = {
              dataSets = [{
                plotType = "LINE"
                timeSeriesQuery = {
                  timeSeriesFilter = {
                    filter = tile.metric == "run.googleapis.com/request_count" ? "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloudfunctions2_function.vend_http.name}\" AND metric.type=\"${tile.metric}\"" : "resource.type=\"cloud_run_revision\" AND metric.type=\"${tile.metric}\""
                    aggregation = {
                      alignmentPeriod    = "300s"
                      perSeriesAligner   = "ALIGN_DELTA"
                      crossSeriesReducer = "REDUCE_SUM"
                      groupByFields      = tile.group
                    }
                  }
                }
              }]
            }
          }
        }
      ]
    }
  })
}
