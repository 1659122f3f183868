"""Offline checks of the Terraform in terraform/: wiring against the code, and broken copies."""
