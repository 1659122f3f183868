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
