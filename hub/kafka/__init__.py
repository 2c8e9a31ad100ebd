"""Kafka plumbing shared by the CLI and the workers: topic creation and client settings."""
