"""Corpus tier: real FHIR data (the official R4 examples, Synthea) through the pure ingest core."""
