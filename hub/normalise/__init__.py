"""Normalisation of validated FHIR into pathway facts: kinds, times, patient references."""
