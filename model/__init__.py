"""The vocfleet library: network, VOC data, augmentation, training, metrics, scoring.

Imports no Celery, SQLAlchemy or CLI code; everything else calls it.
"""

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


class ConfigError(ValueError):
    """Bad input from the user (never retried): the message is one line naming the input and the fix."""
