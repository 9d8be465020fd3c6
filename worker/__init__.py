"""The runner (claim, call ``vocfleet.model``, record) and the Celery app and tasks that wrap it for the fleet."""
