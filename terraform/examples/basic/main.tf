# Example root: the token vending service in one project, policy in config.yaml.
#
#   cp terraform.tfvars.example terraform.tfvars   # then edit
#   terraform init && terraform apply

terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

module "token_vending" {
  source = "../../modules/token-vending"

  project     = var.project
  region      = var.region
  name        = var.name
  config_path = "${path.module}/config.yaml"
  # The application lives at the repository root (main.py, vending/).
  source_dir = "${path.module}/../../.."

  event_subscribers          = var.event_subscribers
  lifetime_extension_allowed = var.lifetime_extension_allowed

  # Observability (monitoring.tf): where the alerts go.
  alert_notification_channels = var.alert_notification_channels

  # Several regions (regions.tf): off unless both are set, with a multi-region database.
  extra_vend_regions    = var.extra_vend_regions
  load_balancer_domains = var.load_balancer_domains
  firestore_location    = var.firestore_location
}

output "service_url" {
  description = "The URL callers use (VENDING_URL): the load balancer's domain, else the function's URL."
  value       = module.token_vending.service_url
}

output "load_balancer_ip" {
  value = module.token_vending.load_balancer_ip
}

output "function_service_accounts" {
  value = module.token_vending.function_service_accounts
}

output "bot_service_accounts" {
  value = module.token_vending.bot_service_accounts
}

output "function_url" {
  value = module.token_vending.function_url
}

output "topics" {
  value = module.token_vending.topics
}

output "runtime_service_account_email" {
  value = module.token_vending.runtime_service_account_email
}

output "token_creator_targets" {
  value = module.token_vending.token_creator_targets
}

output "approvals_trigger" {
  value = module.token_vending.approvals_trigger
}
