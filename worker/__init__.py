"""Celery app and the thin tasks that the fleet workers and the local executor both run."""
