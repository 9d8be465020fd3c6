"""The ``vocfleet`` commands, one module per area; ``vocfleet.scheduler.cli`` assembles them.

Each module imports only click and light vocfleet modules at the top: SQLAlchemy, torch and
matplotlib are imported inside the commands that use them, so ``vocfleet --help`` answers at once.
"""
