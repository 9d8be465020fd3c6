"""The vocfleet library: network, VOC data, augmentation, training, metrics, scoring.

Imports no Celery, SQLAlchemy or CLI code; everything else calls it. This file and ``config``
import nothing heavy (no torch, numpy or Pillow), so the CLI can validate input and show help fast.
"""

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


class VocfleetError(Exception):
    """What vocfleet tells a person: one line naming the input or the state and the fix.

    Every error meant for a person derives from it, so the CLI and the web app each handle them in
    one place: the CLI prints the line and exits with ``exit_code`` (2: bad input, 1: the state of
    the machine, the database or a service), the web app answers ``http_status``.
    """

    exit_code = 1
    http_status = 500


class ConfigError(VocfleetError, ValueError):
    """Bad input from the user (never retried): the message is one line naming the input and the fix."""

    exit_code = 2
    http_status = 400


class DetectorUnavailable(ConfigError):
    """A detector's checkpoint is missing or no longer matches its recorded sha256 (retrain or restore it)."""

    http_status = 409


def utf8(option: str, text: str, fix: str = "give it in UTF-8") -> str:
    """``text`` if it is UTF-8; else ConfigError naming ``option``, the raw bytes and ``fix``.

    A byte the shell or the terminal could not decode arrives as a lone surrogate, which no encoder
    writes: stored or printed, it would break every page, table and message that shows it.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{option} {text.encode('utf-8', 'surrogateescape')!r}: not UTF-8; {fix}") from None
    return text


def check_class(name: str) -> str:
    """The VOC class ``name`` names, in any case (``Car`` is ``car``), else ConfigError listing the valid ones."""
    if name.strip().lower() not in VOC_CLASSES:
        raise ConfigError(f"unknown class {name!r}: choose from {', '.join(VOC_CLASSES)} (or 'all')")
    return name.strip().lower()


class StoreUnavailable(VocfleetError):
    """Object storage could not be reached or used (no bucket, no credentials, an outage that outlasted the retries): one line."""

    http_status = 503
