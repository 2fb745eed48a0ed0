"""Federated round logic: clients train locally, updates are handed off, the server aggregates."""
