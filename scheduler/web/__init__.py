"""The web app and JSON API of ``vocfleet serve`` (the ``web`` extra: FastAPI and uvicorn)."""
