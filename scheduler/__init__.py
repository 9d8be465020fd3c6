"""The ``vocfleet`` CLI (``cli.py``, ``commands/``), configs checked before anything is written, the reaper, and gc."""
