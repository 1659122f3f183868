"""Shared test helpers: a test OIDC issuer and fake service-account keys."""
