"""Multirun jobs: a failed job is recorded and ranked worst; the summary of a sweep."""
