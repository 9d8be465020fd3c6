"""Set when this worker process is shutting down (SIGTERM to a fleet worker): what it holds is handed back
at the next batch (training) or chunk (scoring) and sent to the broker again for another worker.

A module of its own, importing nothing: the Celery app sets it from a signal handler, the runner reads it.
"""

import threading

DRAIN = threading.Event()
