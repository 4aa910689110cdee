"""Adapters: each subpackage turns one foreign protocol into FHIR and back, and nothing else."""
