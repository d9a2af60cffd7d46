"""The engine: a live namespace serving tasks."""
