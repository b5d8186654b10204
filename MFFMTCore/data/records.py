"""The unit every reader produces: one image with whatever labels it carries.

A :class:`SampleRecord` is plain data (paths and strings), so lists of records are cheap to build,
split and write into ``split.json``; pixels are read later by the dataset's loader transform.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from MFFMTCore.base.labels import BIRADS_CLASSES, CLASS_INDEX, IMAGE_LABELS
from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import hash_file, image_files

__all__ = ["BIRADS_CLASSES", "CLASS_INDEX", "IMAGE_LABELS", "DatasetError", "SampleRecord", "birads_index",
           "content_key", "label_index", "record_key", "summarize", "unique_records"]


class DatasetError(MFFMTError):
    """A dataset cannot be used. The message names the file or folder and says what is wrong."""


@dataclass
class SampleRecord:
    """One image of a dataset and the labels it carries; every label may be missing.

    Args:
        id: name of the image, unique within its dataset.
        image: path of the image file (or DICOM folder).
        masks: lesion mask files of the image, combined by logical OR; empty when there is none.
        label: "benign", "malignant", "normal" (no lesion) or None (unknown).
        box: lesion box (x, y, w, h) in pixels (x = column), or None.
        birads: BI-RADS category as written by the dataset ("2" .. "5", "4a" ...), or None.
        group: split unit (near-duplicate group or patient), prefixed by the dataset, e.g. "busbra:17";
            None means the image is its own group.
        scanner: ultrasound device, or None when unknown.
        dataset: name of the dataset the image comes from (e.g. "BUSI", "BUS-BRA").
    """

    id: str
    image: str
    masks: list[str] = field(default_factory=list)
    label: str | None = None
    box: tuple[int, int, int, int] | None = None
    birads: str | None = None
    group: str | None = None
    scanner: str | None = None
    dataset: str = ""

    def group_key(self) -> str:
        """The split unit of this record: its group, or the image itself when it has none."""
        return self.group if self.group is not None else f"{self.dataset}:image:{self.id}"


def record_key(record: SampleRecord) -> str:
    """A name for ``record`` that is unique across datasets: ``<dataset>/<id>`` (as split.json lists it)."""
    return f"{record.dataset}/{record.id}"


# Digests already taken, by (real path, size, modification time): a split hashes each file once.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def content_key(record: SampleRecord) -> str:
    """What the record's image is, whatever it is called: SHA-256 of every file it is read from.

    The same file under two spellings (``a/../x.png``, a link), in two datasets or in two
    overlapping datalists has one content key; splits keep such records on one side and
    evaluation counts them once. A file that cannot be read is keyed by its real path (its loader
    reports the problem).
    """
    digest = hashlib.sha256()
    try:
        for file in image_files(record.image):
            status = os.stat(file)
            identity = (os.path.realpath(file), status.st_size, status.st_mtime_ns)
            if identity not in _DIGESTS:
                whole = hashlib.sha256()
                hash_file(whole, file)
                _DIGESTS[identity] = whole.hexdigest()
            digest.update(_DIGESTS[identity].encode())
    except OSError:
        return f"path:{os.path.realpath(record.image)}"
    return f"sha256:{digest.hexdigest()}"


def unique_records(records: list[SampleRecord]) -> tuple[list[SampleRecord], list[tuple[SampleRecord, SampleRecord]]]:
    """``records`` with each image once (by :func:`content_key`), and the (dropped, kept) pairs."""
    kept: dict[str, SampleRecord] = {}
    dropped = []
    for record in records:
        key = content_key(record)
        if key in kept:
            dropped.append((record, kept[key]))
        else:
            kept[key] = record
    return list(kept.values()), dropped


def label_index(label: str | None) -> int:
    """Class index of ``label`` for the classification head: 0 benign, 1 malignant, -1 otherwise."""
    return CLASS_INDEX.get(label, -1) if label is not None else -1


def birads_index(birads: str | None) -> int:
    """Index of ``birads`` in :data:`BIRADS_CLASSES` (sub-grades such as "4a" count as 4); -1 if absent."""
    if birads is None:
        return -1
    grade = str(birads).strip()[:1]
    return BIRADS_CLASSES.index(grade) if grade in BIRADS_CLASSES else -1


def summarize(records: list[SampleRecord]) -> dict:
    """Counts of records overall and per dataset, by label and by scanner (JSON-ready).

    Unknown labels and scanners are counted under "unknown". Used for the model file's record of the
    data it was trained on.
    """

    def counts(items: list[SampleRecord]) -> dict:
        labels: dict[str, int] = {}
        scanners: dict[str, int] = {}
        for record in items:
            labels[record.label or "unknown"] = labels.get(record.label or "unknown", 0) + 1
            scanners[record.scanner or "unknown"] = scanners.get(record.scanner or "unknown", 0) + 1
        return {"images": len(items), "labels": dict(sorted(labels.items())),
                "scanners": dict(sorted(scanners.items()))}

    names = sorted({record.dataset for record in records})
    return {**counts(records),
            "datasets": {name: counts([record for record in records if record.dataset == name]) for name in names}}
