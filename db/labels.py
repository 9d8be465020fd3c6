"""Labels from people: a class marked present or absent in a picture, by its content (sha256), with who and when.

Appended to, never overwritten: the latest word on a (picture, class) counts, and every earlier
one is its history. Found by content, a label follows a file that is renamed or moved, and holds
for every copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vocfleet.model import ConfigError, check_class

from .models import PictureLabel, Score, ScoredImage
from .states import IN_BOUND, as_utc, plain_text


@dataclass(frozen=True)
class LabelRecord:
    """The latest word on one class of one picture, and how many were said before it."""

    sha256: str
    voc_class: str
    present: bool
    who: str
    at: datetime | None
    earlier: int  # words on the same picture and class before this one
    path: str | None  # where a run last saw the picture (folder/relative path), if any did


def add_label(s: Session, sha256: str, voc_class: str, present: bool, who: str, seen: tuple[str, str] | None = None) -> PictureLabel:
    """Record a person's word on a class of a picture (appended; the latest counts).

    ``seen``: (folder, relative path) of the file the person looked at, for a picture no run
    scored (a detector's evaluation picture): where `labels export` reads it.

    Raises:
        ConfigError: not a VOC class, a sha256 that is not 64 hex digits, or a name that is not plain text.
    """
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ConfigError(f"{sha256!r}: not a picture's sha256 (64 lowercase hex digits)")
    who = plain_text("who", who.strip()) or ""
    if not who or len(who) > 200:
        raise ConfigError("who: say who labels (1 to 200 characters)")
    folder, rel = seen or (None, None)
    label = PictureLabel(sha256=sha256, voc_class=check_class(voc_class), present=present, who=who, folder=folder, rel_path=rel)
    s.add(label)
    s.flush()
    return label


def latest_labels(s: Session, *, sha256: str | None = None, voc_class: str | None = None) -> list[LabelRecord]:
    """The latest word on each (picture, class), oldest first; only one picture's or one class's when asked."""
    q = select(PictureLabel.sha256, PictureLabel.voc_class, func.max(PictureLabel.id).label("last"), func.count().label("n")).group_by(
        PictureLabel.sha256, PictureLabel.voc_class
    )
    if sha256 is not None:
        q = q.where(PictureLabel.sha256 == sha256)
    if voc_class is not None:
        q = q.where(PictureLabel.voc_class == check_class(voc_class))
    latest = {r.last: r.n for r in s.execute(q)}
    if not latest:
        return []
    ids = list(latest)
    rows = [r for i in range(0, len(ids), IN_BOUND) for r in s.scalars(select(PictureLabel).where(PictureLabel.id.in_(ids[i : i + IN_BOUND])))]
    rows.sort(key=lambda r: r.id)
    seen = {**places_people_saw(s, [r.sha256 for r in rows]), **sightings(s, list({r.sha256 for r in rows}))}
    return [
        LabelRecord(r.sha256, r.voc_class, r.present, r.who, as_utc(r.at), latest[r.id] - 1, "/".join(seen[r.sha256]) if r.sha256 in seen else None)
        for r in rows
    ]


def labelled_files(s: Session) -> dict[str, tuple[str, str]]:
    """sha256 -> (folder, relative path) of each labelled picture: where a run last saw it, else where the person saw it."""
    shas = list(s.scalars(select(PictureLabel.sha256).distinct()))
    return {**places_people_saw(s, shas), **sightings(s, shas)}


def places_people_saw(s: Session, shas: list[str]) -> dict[str, tuple[str, str]]:
    """sha256 -> (folder, relative path) recorded with the newest label given on a picture no run had scored."""
    out: dict[str, tuple[str, str]] = {}
    for i in range(0, len(shas), IN_BOUND):
        q = (
            select(PictureLabel.sha256, PictureLabel.folder, PictureLabel.rel_path)
            .where(PictureLabel.sha256.in_(shas[i : i + IN_BOUND]), PictureLabel.folder.is_not(None))
            .order_by(PictureLabel.id)
        )
        out.update({sha: (folder, rel) for sha, folder, rel in s.execute(q)})
    return out


def sightings(s: Session, shas: list[str]) -> dict[str, tuple[str, str]]:
    """sha256 -> (folder, relative path) of the newest scored image with that content, for those a run saw."""
    out: dict[str, tuple[str, str]] = {}
    for i in range(0, len(shas), IN_BOUND):
        q = select(ScoredImage.sha256, ScoredImage.folder, ScoredImage.rel_path).where(ScoredImage.sha256.in_(shas[i : i + IN_BOUND])).order_by(ScoredImage.id)
        out.update({sha: (folder, rel) for sha, folder, rel in s.execute(q)})  # the newest sighting last, so it wins
    return out


def judged_by_people(s: Session, detector_id: int, voc_class: str) -> tuple[list[float], list[bool]]:
    """A detector's probabilities for the pictures people labelled for its class, and their labels (the latest word on each)."""
    labels = {r.sha256: r.present for r in latest_labels(s, voc_class=voc_class)}
    if not labels:
        return [], []
    q = (
        select(ScoredImage.sha256, func.max(Score.probability))
        .join(Score, Score.image_id == ScoredImage.id)
        .where(Score.detector_id == detector_id, ScoredImage.sha256.in_(list(labels)))
        .group_by(ScoredImage.sha256)
    )
    rows = s.execute(q).all()
    return [p for _, p in rows], [labels[sha] for sha, _ in rows]
