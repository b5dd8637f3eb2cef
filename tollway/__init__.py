"""Tollway: an LLM API gateway compatible with new-api's relay and management contract."""

__version__ = "0.1.0"
