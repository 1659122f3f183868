variable "project" {
  description = "Project ID to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the functions and the scheduler job."
  type        = string
  default     = "europe-west1"
}

variable "name" {
  description = "Resource name prefix."
  type        = string
  default     = "token-vending"
}

variable "event_subscribers" {
  description = "Principals allowed to pull notifications and alerts (chat-ops bots)."
  type        = list(string)
  default     = []
}

variable "lifetime_extension_allowed" {
  description = "true once constraints/iam.allowServiceAccountCredentialLifetimeExtension covers the targets of entitlements with lifetime_extension."
  type        = bool
  default     = false
}

variable "alert_notification_channels" {
  description = "Cloud Monitoring notification channels (projects/P/notificationChannels/N) for the alerts."
  type        = list(string)
  default     = []
}

variable "extra_vend_regions" {
  description = "Other regions where vend_http runs (needs load_balancer_domains and a multi-region firestore_location)."
  type        = list(string)
  default     = []
}

variable "load_balancer_domains" {
  description = "Domains of the global HTTPS load balancer in front of vend_http; empty: none."
  type        = list(string)
  default     = []
}

variable "firestore_location" {
  description = "Firestore location: null (the region), or a multi-region (nam5, eur3) for several regions."
  type        = string
  default     = null
}
