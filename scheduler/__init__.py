"""The ``vocfleet`` CLI, queueing and reaping."""
