"""Ingest: authenticate, decode, validate and split what sources publish, as pure functions."""
