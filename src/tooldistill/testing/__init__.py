"""Helpers that generate test and benchmark input (no test framework needed)."""
