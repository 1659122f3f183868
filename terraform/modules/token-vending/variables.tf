# Inputs of the token vending module. Only project, region and config_path are
# required; everything else has the production default next to it.

variable "project" {
  description = "Project ID to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the functions, the Cloud Scheduler job and (by default) Firestore."
  type        = string
}

variable "name" {
  description = "Prefix of every resource name (functions, topics, service accounts, database)."
  type        = string
  default     = "token-vending"

  validation {
    # Service account ids are 6-30 characters and get a suffix such as "-runtime".
    condition     = can(regex("^[a-z][a-z0-9-]{2,20}[a-z0-9]$", var.name))
    error_message = "name must be 4-22 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels."
  type        = map(string)
  default     = {}
}

# --- source and policy -------------------------------------------------------

variable "config_path" {
  description = <<-EOT
    Path of the policy YAML (issuers, entitlements, ...). It is shipped inside the
    function source as config/deployed.yaml (VENDING_CONFIG points there), and the
    Token Creator grants are derived from its entitlements, so grants cannot drift
    from the policy.
  EOT
  type        = string
}

variable "source_dir" {
  description = "Root of the application source (main.py, requirements.txt, vending/). Default: the repository root."
  type        = string
  default     = null
}

variable "source_include" {
  description = <<-EOT
    Glob patterns (relative to source_dir) of the files to package. An allow-list,
    so local databases, virtualenvs, secrets and tests never ship.
  EOT
  type        = list(string)
  default = [
    "main.py",
    "requirements.txt",
    "openapi*.yaml",
    "openapi*.json",
    "vending/**/*.py",
    "vending/**/*.yaml",
    "vending/**/*.json",
    "vending/console/static/*", # the web console's page, script, style sheet and icon
  ]
}

variable "source_exclude" {
  description = <<-EOT
    Glob patterns removed again from the included files. The archive holds only
    what runs in the cloud: the local stand-ins (vending/local/: an IAM
    Credentials stand-in with unauthenticated admin routes, the development
    issuer, the launcher), the command-line client (vending/client/,
    vending/cli.py, vending/__main__.py), tests and benchmarks never ship.
    tests/functional/test_archive.py builds the archive from these same lists,
    imports main from it alone and serves a vend.
  EOT
  type        = list(string)
  default = [
    "**/__pycache__/**",
    "**/*.pyc",
    "tests/**",
    "bench/**",
    "terraform/**",
    ".venv*/**",
    ".vending-local/**",
    "config/**",
    "vending/local/**",
    "vending/client/**",
    "vending/cli.py",
    "vending/__main__.py",
  ]
}

variable "issuers" {
  description = <<-EOT
    Optional override of the policy's `issuers` list (same fields as in the YAML:
    name, issuer, jwks_uri, audience, algorithms, ...). null ships the file as is.
  EOT
  type        = any
  default     = null
}

variable "extra_target_service_accounts" {
  description = <<-EOT
    Service accounts the runtime account may impersonate in addition to those the
    policy names. Normally empty: add an entitlement to the policy instead.
  EOT
  type        = list(string)
  default     = []
}

variable "manage_delegation_grants" {
  description = <<-EOT
    For entitlements with a delegation chain, also grant each delegate Token
    Creator on the next hop (the last one on the target). Set false when the
    owners of those accounts manage the chain themselves.
  EOT
  type        = bool
  default     = true
}

variable "bot_service_accounts" {
  description = <<-EOT
    Chat-ops bot accounts that publish signed messages to the approvals topic and
    sign them with their own key (IAM signJwt). null: the policy's `bots`.
  EOT
  type        = list(string)
  default     = null
}

variable "bot_publish" {
  description = "Grant each bot account roles/pubsub.publisher on the approvals topic."
  type        = bool
  default     = true
}

variable "bot_self_signing" {
  description = <<-EOT
    Grant each bot account iam.serviceAccounts.signJwt on itself (a custom role with
    that one permission). Set false when the bots' owners manage it.
  EOT
  type        = bool
  default     = true
}

variable "bot_signer_role" {
  description = <<-EOT
    Role with iam.serviceAccounts.signJwt bound to each bot on itself. null: the module
    creates it as a custom role of var.project (which can only be granted on that
    project's accounts; for bots of other projects pass an organization-level role).
  EOT
  type        = string
  default     = null
}

variable "lifetime_extension_allowed" {
  description = <<-EOT
    Set true once the organization policy constraint
    constraints/iam.allowServiceAccountCredentialLifetimeExtension lists the target
    service accounts of every entitlement with `lifetime_extension: true` (tokens
    over 1 h). While false, a policy with such an entitlement fails the plan.
  EOT
  type        = bool
  default     = false
}

# --- runtime settings (VENDING_* environment) --------------------------------

variable "retention_days" {
  description = "Days a finished record is kept before Firestore TTL deletes it (VENDING_RETENTION_DAYS)."
  type        = number
  default     = 90

  validation {
    condition     = var.retention_days >= 1 && var.retention_days <= 3650 && floor(var.retention_days) == var.retention_days
    error_message = "retention_days must be a whole number of days in [1, 3650]."
  }
}

variable "reservation_timeout_seconds" {
  description = "Age after which an unconfirmed `issuing` reservation is reconciled by the sweep (VENDING_RESERVATION_TIMEOUT)."
  type        = number
  default     = 300

  validation {
    condition     = var.reservation_timeout_seconds >= 30 && var.reservation_timeout_seconds <= 3600
    error_message = "reservation_timeout_seconds must be in [30, 3600]."
  }
}

variable "iam_timeout_seconds" {
  description = "Timeout of one IAM Credentials API attempt, seconds (VENDING_IAM_TIMEOUT)."
  type        = number
  default     = 10

  validation {
    condition     = var.iam_timeout_seconds >= 0.1 && var.iam_timeout_seconds <= 60
    error_message = "iam_timeout_seconds must be in [0.1, 60]."
  }
}

variable "iam_retries" {
  description = "Extra attempts on IAM 500/503 (VENDING_IAM_RETRIES)."
  type        = number
  default     = 2

  validation {
    condition     = var.iam_retries >= 0 && var.iam_retries <= 5 && floor(var.iam_retries) == var.iam_retries
    error_message = "iam_retries must be a whole number in [0, 5]."
  }
}

variable "iam_endpoint" {
  description = "IAM Credentials API endpoint (VENDING_IAM_ENDPOINT)."
  type        = string
  default     = "https://iamcredentials.googleapis.com"
}

variable "iam_admin_endpoint" {
  description = "IAM API endpoint for the kill switch's service account disable / enable / get (VENDING_IAM_ADMIN_ENDPOINT)."
  type        = string
  default     = "https://iam.googleapis.com"
}

variable "kill_switch_role" {
  description = <<-EOT
    Role bound to the runtime account on each target account for the kill switch
    (iam.serviceAccounts.disable, .enable, .get and nothing else). null: the module
    creates it as a custom role of var.project. A project custom role can only be
    granted on resources of that project: when entitlements name service accounts of
    other projects, create the same three-permission role at the organization level
    and give its id here (organizations/ORG/roles/ID).
  EOT
  type        = string
  default     = null
}

variable "keys_base_url" {
  description = "Base URL of the service accounts' public keys, for bot messages (VENDING_KEYS_BASE_URL)."
  type        = string
  default     = "https://www.googleapis.com"
}

variable "log_level" {
  description = "VENDING_LOG_LEVEL."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], upper(var.log_level))
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "tracing" {
  description = <<-EOT
    VENDING_TRACING: "off" (default) or "cloud-trace" (OpenTelemetry spans of each vend
    exported to Cloud Trace; the function then also needs the OpenTelemetry packages in
    requirements.txt, see docs/observability.md). "cloud-trace" grants the vend
    function's account roles/cloudtrace.agent.
  EOT
  type        = string
  default     = "off"

  validation {
    condition     = contains(["off", "cloud-trace"], var.tracing)
    error_message = "tracing must be \"off\" or \"cloud-trace\"."
  }
}

# --- scaling and scheduling --------------------------------------------------

variable "max_instances" {
  description = "Maximum instances of the HTTP function."
  type        = number
  default     = 10
}

variable "event_max_instances" {
  description = "Maximum instances of the Pub/Sub function (the sweep always runs on at most one)."
  type        = number
  default     = 3
}

variable "sweep_schedule" {
  description = "Cron schedule of the expiry sweep (Cloud Scheduler -> Pub/Sub -> sweep_expired)."
  type        = string
  default     = "* * * * *"
}

variable "sweep_time_zone" {
  description = "Time zone of sweep_schedule."
  type        = string
  default     = "Etc/UTC"
}

# --- storage and messaging ---------------------------------------------------

variable "firestore_database" {
  description = "Firestore database id. Default: the name prefix (a named database, so an existing (default) one is left alone)."
  type        = string
  default     = null
}

variable "firestore_location" {
  description = "Firestore location (a region or a multi-region such as nam5). Default: region."
  type        = string
  default     = null
}

variable "max_delivery_attempts" {
  description = "Deliveries of one event message before it goes to the dead-letter topic."
  type        = number
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be in [5, 100] (Pub/Sub's limits)."
  }
}

variable "event_subscribers" {
  description = <<-EOT
    Principals (e.g. "serviceAccount:chat-bot@p.iam.gserviceaccount.com") allowed to
    pull the notifications and alerts subscriptions (chat-ops bots).
  EOT
  type        = list(string)
  default     = []
}

variable "source_bucket_name" {
  description = "Name of the bucket holding the function source archives. Default: PROJECT-NAME-source."
  type        = string
  default     = null
}

variable "enable_apis" {
  description = "Enable the Google APIs the service needs (set false where a platform team does it)."
  type        = bool
  default     = true
}

# --- observability -------------------------------------------------------------

variable "monitoring" {
  description = "Create the log-based metrics, alert policies and dashboard (monitoring.tf)."
  type        = bool
  default     = true
}

variable "alert_notification_channels" {
  description = "Cloud Monitoring notification channel ids (projects/P/notificationChannels/N) the alerts go to."
  type        = list(string)
  default     = []
}

variable "alert_5xx_per_5m" {
  description = "Alert when vend_http answers more than this many 5xx responses in 5 minutes."
  type        = number
  default     = 5
}

variable "alert_iam_errors_per_5m" {
  description = "Alert when more than this many vends fail at the IAM Credentials API in 5 minutes."
  type        = number
  default     = 3
}

# --- regions and the load balancer ---------------------------------------------

variable "extra_vend_regions" {
  description = <<-EOT
    Regions where vend_http also runs, behind one global external HTTPS load balancer
    (regions.tf). Needs load_balancer_domains and a multi-region firestore_location
    (nam5, eur3). The event functions and the scheduler stay in `region`.
  EOT
  type        = list(string)
  default     = []
}

variable "load_balancer_domains" {
  description = <<-EOT
    Domains of a global external HTTPS load balancer in front of vend_http (a Google-managed
    certificate; point their DNS A records at output load_balancer_ip). Empty: no load balancer.
  EOT
  type        = list(string)
  default     = []
}

variable "load_balancer_security_policy" {
  description = "Cloud Armor security policy (id) attached to the load balancer's backend, or null."
  type        = string
  default     = null
}
