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
