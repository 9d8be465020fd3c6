"""vocfleet: one ResNet-50 "is there a <class>?" detector per PASCAL VOC class, trained and scored as a fleet.

The installed package maps the repository's folders: ``vocfleet.model`` (the library: network,
data, training, scoring; no Celery, SQL or CLI), ``vocfleet.db`` (tables, sessions, migrations),
``vocfleet.worker`` (the runner and its Celery tasks) and ``vocfleet.scheduler`` (the CLI).
"""

__version__ = "0.11.0"
