"""VOC lists, image decoding, and the decode-once cache of resized uint8 images."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageOps

from . import VOC_CLASSES, ConfigError
from .config import TrainConfig, eval_fold
from .files import replacing, write_bytes

log = logging.getLogger(__name__)

# Images above this many pixels are refused as decompression bombs (Pillow warns at ~89M).
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
Image.init()  # register every plugin now, so open(formats=...) can name them
CACHE_VERSION = 1


def check_voc_root(root: str | os.PathLike) -> Path:
    """Return ``root`` resolved, or raise ConfigError if it does not look like a VOC year folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise ConfigError(f"VOC root {str(root)!r} {what}: pass --voc-root pointing at VOCdevkit/VOC2007")
    for sub in ("ImageSets/Main", "JPEGImages"):
        if not (path / sub).is_dir():
            raise ConfigError(f"VOC root {str(root)!r} has no {sub}/: pass --voc-root pointing at VOCdevkit/VOC2007")
    return path.resolve()


# The file at the top of a `vocfleet labels export` folder. Its lists are people's word on each picture
# (1 there, -1 not there, 0 nobody said), and a picture that came from a VOC folder keeps its id there;
# given as a further --voc-root, such a folder's word on a picture the first folder lists replaces that
# folder's label (the same picture: the export checked its content), and its other pictures train as new ones.
PEOPLES_LABELS = "LABELS_FROM_PEOPLE.txt"


def list_path(root: Path, voc_class: str, split: str) -> Path:
    return root / "ImageSets" / "Main" / f"{voc_class}_{split}.txt"


def has_split(root: Path, split: str) -> bool:
    return list_path(root, VOC_CLASSES[0], split).is_file()


def read_class_list(root: Path, voc_class: str, split: str) -> dict[str, int]:
    """Read ``ImageSets/Main/<class>_<split>.txt``.

    Args:
        root: a VOC year folder.
        voc_class: one of :data:`VOC_CLASSES`.
        split: e.g. ``train``, ``val``, ``trainval``, ``test``.
    Returns:
        image id -> label (1 present, -1 absent, 0 difficult only), in file order.
    Raises:
        ConfigError: the list is missing or a line is malformed.
    """
    path = list_path(root, voc_class, split)
    if not path.is_file():
        raise ConfigError(f"no list {path}: split {split!r} does not exist in this VOC root (check --voc-root and the split name)")
    labels: dict[str, int] = {}
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("1", "-1", "0"):
                raise ConfigError(f"{path}:{lineno}: malformed line {line.strip()!r}: expected '<image id> <1|-1|0>' (fix or replace the list file)")
            labels[parts[0]] = int(parts[1])
    if not labels:
        raise ConfigError(f"{path} is empty: replace it with the original devkit list")
    return labels


def split_ids(root: Path, split: str, voc_class: str | None = None) -> list[str]:
    """Image ids of a split: ``<split>.txt`` if present, else the ids of a class list."""
    plain = root / "ImageSets" / "Main" / f"{split}.txt"
    if plain.is_file():
        return [line.split()[0] for line in plain.read_text().splitlines() if line.strip()]
    return list(read_class_list(root, voc_class or VOC_CLASSES[0], split))


def in_holdout(image_id: str, fraction: float) -> bool:
    """Deterministic, seed-independent membership of the evaluation hold-out (same for every class)."""
    return (zlib.crc32(f"vocfleet-holdout:{image_id}".encode()) % 10_000) < fraction * 10_000


def fold_members(labels: dict[str, int], fold: int, folds: int) -> set[str]:
    """The ids of fold ``fold`` of ``folds``, stratified by label and seed-independent.

    Within each label the ids, ordered by a hash of the id, are dealt to the folds in turn, so the
    folds partition the split and each holds its share of positives to within one.
    """
    chosen: set[str] = set()
    for want in sorted(set(labels.values())):
        group = sorted((i for i, v in labels.items() if v == want), key=lambda i: (zlib.crc32(f"vocfleet-fold:{i}".encode()), i))
        chosen.update(group[fold::folds])
    return chosen


def in_image_fold(image_id: str, fold: int, folds: int) -> bool:
    """Whether a picture is in fold ``fold`` of ``folds`` cut by image: a function of its id alone, so
    the same for every class, whatever each class's list keeps (``--fold-by image``, what a start needs)."""
    return zlib.crc32(f"vocfleet-fold:{image_id}".encode()) % folds == fold


def held_out(cfg: TrainConfig, ids: Iterable[str], labels: dict[str, int] | None = None) -> set[str]:
    """The pictures of ``ids`` that a hold-out or fold evaluation split keeps out of training (none for a named split).

    ``labels``: the class's 0/1 labels, for folds stratified by label (``fold_by="label"``).
    """
    fold = eval_fold(cfg.eval_split)
    if fold is not None:
        if cfg.fold_by == "label" and labels is not None:
            return fold_members(labels, *fold)
        return {i for i in ids if in_image_fold(i, *fold)}
    if cfg.eval_split == "holdout":
        return {i for i in ids if in_holdout(i, cfg.eval_fraction)}
    return set()


def label_digest(pairs: Iterable[tuple[str, int]]) -> str:
    """sha256 of (image id, 0/1 label) pairs in id order: the data fingerprint (see ``splits.fingerprint``)."""
    return hashlib.sha256("".join(f"{i} {label}\n" for i, label in sorted(pairs)).encode()).hexdigest()


def planned_fingerprints(configs: Sequence[TrainConfig]) -> dict[str, tuple[str, str]]:
    """class -> the (train, eval) fingerprints its job will record, from the lists alone, before any picture is decoded.

    What :func:`prepare_splits` keeps, minus the pictures that are not there (each folder listed
    once for all classes); a picture present but unreadable is the one case where the job's own
    fingerprint differs.
    """
    present: dict[Path, set[str]] = {}
    out = {}
    for cfg in configs:
        root = check_voc_root(cfg.voc_root)
        for folder in (root, *map(check_voc_root, cfg.more_roots)):
            if folder not in present:
                present[folder] = {e.name[:-4] for e in os.scandir(folder / "JPEGImages") if e.name.endswith(".jpg")}
        there = set().union(*(present[check_voc_root(f)] for f in (cfg.voc_root, *cfg.more_roots)))
        train_labels, eval_labels = role_labels(cfg, root)
        out[cfg.voc_class] = (
            label_digest((i, v) for i, v in train_labels.items() if i in there),
            label_digest((i, v) for i, v in eval_labels.items() if i in there),
        )
    return out


def people_said(cfg: TrainConfig, voc_class: str) -> dict[str, int]:
    """id -> 1 or -1: what people said about ``voc_class`` in the further folders that are labels exports
    (:data:`PEOPLES_LABELS`), the first such folder's word where two speak of one picture."""
    out: dict[str, int] = {}
    for extra in map(check_voc_root, cfg.more_roots):
        if (extra / PEOPLES_LABELS).is_file() and list_path(extra, voc_class, cfg.train_split).is_file():
            for i, v in read_class_list(extra, voc_class, cfg.train_split).items():
                if v != 0:  # 0: nobody said
                    out.setdefault(i, v)
    return out


def _corrected(cfg: TrainConfig, root: Path) -> set[str]:
    """Ids of the first folder (training or evaluation split) that a labels export speaks of: the same pictures, relabelled, never new ones."""
    listed = None if cfg.is_start else cfg.voc_class
    exported = set()
    for extra in map(check_voc_root, cfg.more_roots):
        if (extra / PEOPLES_LABELS).is_file():
            exported |= set(split_ids(extra, cfg.train_split, listed))
    if not exported:
        return exported
    ids = set(split_ids(root, cfg.train_split, listed))
    if not (cfg.eval_split == "holdout" or eval_fold(cfg.eval_split) is not None) and has_split(root, cfg.eval_split):
        ids |= set(split_ids(root, cfg.eval_split, listed))
    return ids & exported


def role_labels(cfg: TrainConfig, root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """0/1 labels of the images trained on (training and validation together) and of those evaluated on, from the lists.

    What people said in a labels export given as a further ``--voc-root`` replaces the list's
    label of the same picture, wherever it is used (training or evaluation).

    Raises:
        ConfigError: the evaluation split shares images with the training split.
    """
    said = people_said(cfg, cfg.voc_class)
    listed = read_class_list(root, cfg.voc_class, cfg.train_split)
    listed.update((i, v) for i, v in said.items() if i in listed)
    train_labels = _labels_for(listed, cfg.difficult)
    # A further folder's picture whose id the first folder lists (with any label) is the first folder's: never trained from elsewhere.
    corrected = _corrected(cfg, root)
    more = {
        i: v
        for i, v in _more_labels(cfg, lambda extra: _labels_for(read_class_list(extra, cfg.voc_class, cfg.train_split), cfg.difficult)).items()
        if i not in listed and i not in corrected
    }
    if cfg.eval_split == "holdout" or eval_fold(cfg.eval_split) is not None:
        held = held_out(cfg, train_labels, train_labels)
        eval_labels = {i: v for i, v in train_labels.items() if i in held}
        return {**{i: v for i, v in train_labels.items() if i not in held}, **more}, eval_labels
    eval_listed = read_class_list(root, cfg.voc_class, cfg.eval_split)
    eval_listed.update((i, v) for i, v in said.items() if i in eval_listed)
    eval_labels = _labels_for(eval_listed, cfg.difficult)
    overlap = set(eval_labels) & (set(train_labels) | set(more))
    if overlap:
        raise ConfigError(
            f"--eval-split {cfg.eval_split} shares {len(overlap)} images with --train-split {cfg.train_split}: "
            "choose disjoint splits (e.g. train/val or trainval/test)"
        )
    return {**train_labels, **more}, eval_labels


def _more_labels(cfg: TrainConfig, read: Callable[[Path], dict]) -> dict:
    """The labels ``read`` gives for each of ``cfg.more_roots``, together; an id already seen in an earlier folder keeps that folder's."""
    out: dict = {}
    for extra in cfg.more_roots:
        for i, v in read(check_voc_root(extra)).items():
            out.setdefault(i, v)
    return out


def training_sources(cfg: TrainConfig) -> tuple[Path, list[str], list[tuple[Path, list[str]]]]:
    """Where the training split's pictures are: ``voc_root`` and its ids, then each of ``more_roots`` with the ids no earlier folder has.

    Returns:
        (root, ids, [(more root, ids), ...]): what :func:`decoded_cache` decodes for training.
    """
    root = check_voc_root(cfg.voc_root)
    listed = None if cfg.is_start else cfg.voc_class
    ids = split_ids(root, cfg.train_split, listed)
    seen, more = set(ids) | _corrected(cfg, root), []  # a relabelled picture is decoded from the first folder, as the same picture
    for extra in map(check_voc_root, cfg.more_roots):
        new = [i for i in split_ids(extra, cfg.train_split, listed) if i not in seen]
        seen.update(new)
        more.append((extra, new))
    return root, ids, more


def every_class_labels(cfg: TrainConfig, root: Path) -> tuple[dict[str, list[float]], list[str]]:
    """Every picture of the training split with its 20 labels (1 present, 0 absent, -1 difficult only or
    unknown: left out of the loss), and the first folder's ids.

    The first folder's pictures with its lists' labels, people's word (a labels export given as a
    further folder) replacing a list's where they gave it; then each further folder's pictures that
    no earlier folder has. What a start trains on (less the pictures held out) and what
    ``--aux-classes`` learns beside a class.
    """
    # A class without a list for the split (a folder of one's own with a few classes) is unknown for every picture.
    lists = {c: read_class_list(root, c, cfg.train_split) if list_path(root, c, cfg.train_split).is_file() else {} for c in VOC_CLASSES}
    if not any(lists.values()):
        raise ConfigError(f"no class list of split {cfg.train_split!r} in {root}/ImageSets/Main (check --voc-root and --train-split)")
    ids = list(dict.fromkeys(i for labels in lists.values() for i in labels))
    for c in VOC_CLASSES:  # people's word on a picture of the first folder replaces its list's
        lists[c].update((i, v) for i, v in people_said(cfg, c).items() if i in lists[c] or i in ids)
    lookup = {1: 1.0, -1: 0.0, 0: -1.0}
    out = {i: [lookup[lists[c].get(i, 0)] for c in VOC_CLASSES] for i in sorted(ids)}

    def all_labels(extra: Path) -> dict[str, list[float]]:
        found = {c: read_class_list(extra, c, cfg.train_split) if list_path(extra, c, cfg.train_split).is_file() else {} for c in VOC_CLASSES}
        return {i: [lookup[found[c].get(i, 0)] for c in VOC_CLASSES] for i in sorted({i for labels in found.values() for i in labels})}

    first = set(ids) | _corrected(cfg, root)
    return {**out, **{i: v for i, v in _more_labels(cfg, all_labels).items() if i not in first}}, ids


def start_labels(cfg: TrainConfig, root: Path) -> dict[str, list[float]]:
    """A start job's training pictures, each with its 20 labels (:func:`every_class_labels`).

    Every picture of the training split that no class evaluates on: the hold-out or fold is cut by
    image (:func:`held_out`), so it is the same for every class; a named evaluation split is other pictures.
    """
    labels, first = every_class_labels(cfg, root)
    held = held_out(cfg, first)
    return {i: v for i, v in labels.items() if i not in held}


def _labels_for(labels: dict[str, int], difficult: str) -> dict[str, int]:
    """Map VOC labels to 0/1; 'difficult only' images are dropped or counted as asked."""
    out = {}
    for image_id, label in labels.items():
        if label == 0:
            if difficult == "exclude":
                continue
            label = 1 if difficult == "positive" else -1
        out[image_id] = 1 if label == 1 else 0
    return out


# What scoring accepts (multi-picture JPEGs from phones open as JPEG, format "MPO").
# Pillow allocates a picture in blocks (16 MB by default), below the size glibc always maps afresh
# (32 MB): a thread's freed blocks then stay in its own malloc arena, and every decode thread ends
# up holding its largest picture. Blocks of 64 MB are mapped and unmapped, so memory follows the
# pictures being decoded now (the pixel budget in decode.py), not the largest each thread ever saw.
Image.core.set_block_size(64 << 20)

# MPO: multi-picture JPEGs from phones and 3D cameras (and how Pillow reads many Ultra HDR pictures); the first picture is used.
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_OPENERS = tuple(f for f in IMAGE_FORMATS if f != "MPO")  # Pillow opens MPO through its JPEG plugin


def open_rgb(source, draft: int | None = None) -> Image.Image:
    """Decode an image file (path or file object) to RGB with EXIF orientation applied.

    JPEGs are decoded in draft mode (DCT downscaling) when ``draft`` is much smaller than the
    file: decoding at 1/2, 1/4 or 1/8 scale costs a fraction of a full decode.

    Raises:
        OSError, ValueError, Image.DecompressionBombError/Warning: unreadable or unsafe file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source, formats=_OPENERS) as im:
            out = to_rgb(im, draft)
            return out.copy() if out is im else out  # older Pillows refuse to use an image once its file is closed


def to_rgb(im: Image.Image, draft: int | None = None) -> Image.Image:
    """Decode an opened (not yet loaded) image: :func:`open_rgb` for callers that opened it already.

    May return ``im`` itself, loaded: each copy of a 64-megapixel picture is 190 MB, so none is
    made unless the picture needs turning or converting.
    """
    if draft is not None and im.format in ("JPEG", "MPO"):
        im.draft("RGB", (draft * 2, draft * 2))
    if im.getexif().get(0x0112, 1) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite on white so transparent areas do not turn black.
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    elif im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grey: keep the top 8 bits
        im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    if im.mode != "RGB":
        im = im.convert("RGB")
    im.load()
    return im


def resize_square(im: Image.Image, size: int) -> np.ndarray:
    """The one resize used for training, validation and scoring: squash to size x size (whole picture kept)."""
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))


def load_rgb(source, size: int | None = None) -> Image.Image:
    """:func:`open_rgb`, then resized to size x size when ``size`` is given."""
    im = open_rgb(source, size)
    return Image.fromarray(resize_square(im, size)) if size is not None else im


@dataclass
class DecodedImages:
    """A split decoded once: ``images[i]`` is an (S, S, 3) uint8 view, ``ok[i]`` False if unreadable."""

    ids: list[str]
    images: np.ndarray
    ok: np.ndarray
    bad: dict[str, str]

    def index(self) -> dict[str, int]:
        return {image_id: i for i, image_id in enumerate(self.ids)}


def _decode_into(arr: np.ndarray, i: int, path: Path, size: int) -> str | None:
    try:
        arr[i] = resize_square(open_rgb(path, size), size)
        return None
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # noqa: BLE001 - any decode failure is reported per image
        return f"unreadable: {exc.__class__.__name__}: {exc}"


def decoded_cache(
    root: Path,
    ids: Sequence[str],
    size: int,
    cache_dir: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
    more: Sequence[tuple[Path, Sequence[str]]] = (),
) -> DecodedImages:
    """Return the images ``ids`` of ``root`` decoded and resized to ``size``, building the cache once.

    The cache is a uint8 ``.npy`` memory map keyed by the VOC root, the id list and the size, so the
    twenty class jobs of one machine share it. Building takes a file lock and publishes the finished
    array with ``os.replace``: two jobs starting at once build it once, and a killed build leaves
    nothing that looks finished.

    Args:
        root: VOC year folder.
        ids: image ids, in the order the array should have.
        size: side of the square images.
        cache_dir: where cache files live (one per key).
        progress: called with (done, total) while building.
        threads: decode threads (Pillow releases the GIL while decoding); default: CPU count.
        more: further (VOC folder, ids) whose pictures follow ``ids`` in the same array (``--voc-root`` given more than once).
    Returns:
        A :class:`DecodedImages` over a read-only memory map.
    """
    extra = [[str(r), list(i)] for r, i in more]
    key = hashlib.sha256(json.dumps([CACHE_VERSION, str(root), list(ids), size, *([extra] if extra else [])]).encode()).hexdigest()[:24]
    paths = [root / "JPEGImages" / f"{i}.jpg" for i in ids] + [r / "JPEGImages" / f"{i}.jpg" for r, rids in more for i in rids]
    ids = [*ids, *(i for _, rids in more for i in rids)]
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_path = cache_dir / f"{key}.npy"
    meta_path = cache_dir / f"{key}.json"
    with FileLock(str(cache_dir / f"{key}.lock")):
        if not (data_path.is_file() and meta_path.is_file()):
            _build_cache(root, ids, paths, size, data_path, meta_path, progress, threads)
    meta = json.loads(meta_path.read_text())
    images = np.load(data_path, mmap_mode="r")
    ok = np.array([image_id not in meta["bad"] for image_id in ids], dtype=bool)
    if meta["bad"]:
        log.warning("%d listed image(s) missing or unreadable, skipped: %s", len(meta["bad"]), ", ".join(sorted(meta["bad"])[:20]))
    return DecodedImages(ids=list(ids), images=images, ok=ok, bad=meta["bad"])


def _build_cache(root, ids, paths, size, data_path, meta_path, progress, threads) -> None:
    """Decode into a temporary memory map beside the cache file (the one writer: renamed once whole,
    removed on failure); its blocks are reserved first (a sparse map on a full disk dies of SIGBUS
    at the first page it cannot back)."""
    need = len(ids) * size * size * 3 / 1e6
    with replacing(data_path, then="'vocfleet retry' the job", what=f"building the image cache ({need:.0f} MB)") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ids), size, size, 3))
        _reserve(tmp)
        bad: dict[str, str] = {}
        threads = threads or os.cpu_count() or 1
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(_decode_into, arr, i, path, size) for i, path in enumerate(paths)]
            for done, (image_id, fut) in enumerate(zip(ids, futures, strict=True), 1):
                reason = fut.result()
                if reason:
                    bad[image_id] = reason
                if progress and (done % 64 == 0 or done == len(ids)):
                    progress(done, len(ids))
        arr.flush()
        del arr
    write_bytes(meta_path, json.dumps({"root": str(root), "size": size, "count": len(ids), "bad": bad}).encode(), then="'vocfleet retry' the job")


def _reserve(path: Path) -> None:
    """Allocate every block of ``path`` now, so running out of space is an error here rather than a SIGBUS later."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it: as before
            raise
    finally:
        os.close(fd)


def voc_summary(root: Path) -> dict:
    """What a VOC root holds: per split, images listed, present and missing; per class, positives.

    Returns:
        {"splits": {split: {"listed", "present", "missing": [ids]}},
         "classes": {class: {split: {"positive", "difficult", "negative"}}}}
    """
    main = root / "ImageSets" / "Main"
    splits = sorted({p.stem.split("_", 1)[1] for p in main.glob("*_*.txt") if p.stem.split("_", 1)[0] in VOC_CLASSES})
    present = {p.stem for p in (root / "JPEGImages").glob("*.jpg")}
    out: dict = {"splits": {}, "classes": {}}
    for split in splits:
        ids = split_ids(root, split)
        missing = [i for i in ids if i not in present]
        out["splits"][split] = {"listed": len(ids), "present": len(ids) - len(missing), "missing": missing}
    for cls in VOC_CLASSES:
        out["classes"][cls] = {}
        for split in splits:
            if list_path(root, cls, split).is_file():
                labels = list(read_class_list(root, cls, split).values())
                out["classes"][cls][split] = {"positive": labels.count(1), "difficult": labels.count(0), "negative": labels.count(-1)}
    return out
