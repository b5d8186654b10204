"""Readers that turn a dataset on disk into a list of :class:`SampleRecord`.

Three layouts are understood, and :func:`read_dataset` tells them apart:

- BUSI (Al-Dhabyani et al. 2020): ``benign/``, ``malignant/``, ``normal/`` with ``NAME.png`` and its
  masks ``NAME_mask.png``, ``NAME_mask_1.png``, ...; an optional ``groups.csv`` (image, label, group)
  names near-duplicate groups.
- BUS-BRA (Gomez-Flores et al. 2024): ``Images/bus_ID.png``, ``Masks/mask_ID.png`` and ``bus_data.csv``
  (ID, Case, Pathology, BIRADS, Device, BBOX ...).
- A datalist: MONAI-style JSON (``{"training": [...], "validation": [...]}`` or a bare list) or CSV
  with the same column names, in which every field but ``image`` may be missing.

Readers check that every listed file exists and report all problems at once (the first few by name),
so a user fixes a broken copy in one pass. Pixels are not read here.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from MFFMTCore.data.records import IMAGE_LABELS, DatasetError, SampleRecord
from MFFMTCore.files import image_stem, is_image_file

#: How many problems a DatasetError spells out before summarising the rest.
SHOWN_PROBLEMS = 5
#: Datalist sections read by default; "test" sections usually carry no labels and are left out.
DATALIST_SECTIONS = ("training", "validation")

_BUSI_MASK = re.compile(r"(?P<image>.+)_mask(?:_(?P<index>\d+))?")
_NUMBERS = re.compile(r"-?\d+(?:\.\d+)?")
_LABEL_ALIASES = {"0": "benign", "1": "malignant", "benign": "benign", "malignant": "malignant",
                  "normal": "normal"}


class _Problems:
    """Collects what is wrong with a dataset so that one error lists them all."""

    def __init__(self, source: Path):
        self.source = source
        self.items: list[str] = []

    def add(self, problem: str) -> None:
        self.items.append(problem)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            raise DatasetError(self.source, self.items[0])
        shown = "; ".join(self.items[:SHOWN_PROBLEMS])
        more = f" (and {len(self.items) - SHOWN_PROBLEMS} more)" if len(self.items) > SHOWN_PROBLEMS else ""
        raise DatasetError(self.source, f"{len(self.items)} problems: {shown}{more}")


def _natural_key(text: str) -> list[Any]:
    """Sort key that puts "benign (2)" before "benign (10)"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _blank(value: Any) -> bool:
    """True for the ways a missing field shows up in JSON and CSV (None, "", "NaN")."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none", "null")


def _text(value: Any) -> str | None:
    """A field as text, None when blank; 4.0 becomes "4" so numbers read from CSV and JSON agree."""
    if _blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def parse_label(value: Any) -> str | None:
    """Normalise a class label: "benign"/"malignant"/"normal" (any case) or 0/1; None when blank.

    Raises:
        ValueError: the value is none of these.
    """
    text = _text(value)
    if text is None:
        return None
    label = _LABEL_ALIASES.get(text.lower())
    if label is None:
        raise ValueError(f"unknown label {value!r} (expected benign, malignant, normal, 0 or 1)")
    return label


def parse_box(value: Any) -> tuple[int, int, int, int] | None:
    """Parse a box (x, y, w, h) given as a list or as text such as "[91, 24, 103, 79]"; None when blank.

    Raises:
        ValueError: not four numbers, or a non-positive width or height.
    """
    if not isinstance(value, (list, tuple)) and _blank(value):
        return None
    numbers = list(value) if isinstance(value, (list, tuple)) else _NUMBERS.findall(str(value))
    try:
        x, y, w, h = (round(float(number)) for number in numbers)
    except (TypeError, ValueError):
        raise ValueError(f"box {value!r} is not four numbers x, y, w, h") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"box {value!r} has no area")
    return x, y, w, h


def read_busi(root: str | os.PathLike) -> list[SampleRecord]:
    """Read a folder in the BUSI layout.

    Args:
        root: folder holding ``benign/``, ``malignant/`` and optionally ``normal/``; the folder name
            gives each image its label. ``groups.csv`` (columns image, label, group), when present,
            gives near-duplicate groups (ids prefixed "busi:"); otherwise each image is its own group.

    Returns:
        One record per image (dataset "BUSI", no scanner), masks in file order (NAME_mask, _mask_1 ...).

    Raises:
        DatasetError: the folder is missing or empty, a mask has no image, or groups.csv is malformed.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise DatasetError(root, "BUSI folder not found")
    groups = _read_busi_groups(root / "groups.csv")
    problems = _Problems(root)
    records: list[SampleRecord] = []
    for label in IMAGE_LABELS:
        folder = root / label
        if not folder.is_dir():
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        for path in folder.iterdir():
            if not path.is_file() or not is_image_file(path):
                continue
            match = _BUSI_MASK.fullmatch(image_stem(path))
            if match:
                masks[match["image"]].append((int(match["index"] or 0), path))
            else:
                images[image_stem(path)] = path
        for stem in sorted(set(masks) - set(images), key=_natural_key):
            problems.add(f"mask {masks[stem][0][1]} has no image {stem}.png beside it")
        for stem in sorted(images, key=_natural_key):
            path = images[stem]
            group = groups.get(f"{label}/{path.name}")
            records.append(SampleRecord(
                id=stem, image=str(path), masks=[str(mask) for _, mask in sorted(masks[stem])],
                label=label, group=f"busi:{group}" if group else None, scanner=None, dataset="BUSI"))
    problems.raise_if_any()
    if not records:
        raise DatasetError(root, "no images found in benign/, malignant/ or normal/")
    return records


def _read_busi_groups(path: Path) -> dict[str, str]:
    """Map "label/file.png" to its near-duplicate group from BUSI's groups.csv (empty if absent)."""
    if not path.is_file():
        return {}
    rows = read_csv_table(path, required=("image", "group"))
    return {Path(row["image"]).as_posix(): row["group"].strip() for row in rows if not _blank(row["group"])}


def read_csv_table(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (header names stripped), checking that the ``required`` columns exist.

    Raises:
        DatasetError: the file cannot be read as CSV, or a required column is missing.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [name.strip() for name in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(path, f"cannot be read as CSV ({error})") from error
    missing = [name for name in required if name not in columns]
    if missing:
        raise DatasetError(path, f"missing column(s) {', '.join(missing)} (found: {', '.join(columns)})")
    # Header cells with stray spaces ("ID, Case") are common in hand-made files.
    return [{(key or "").strip(): value for key, value in row.items()} for row in rows]


def read_busbra(root: str | os.PathLike) -> list[SampleRecord]:
    """Read a folder in the BUS-BRA layout.

    Args:
        root: folder holding ``Images/``, ``Masks/`` and ``bus_data.csv``. Each CSV row gives ID
            (image ``Images/ID.png``, mask ``Masks/mask_<ID without "bus_">.png``), Case (patient:
            group "busbra:<Case>"), Pathology (label), BIRADS, Device (scanner) and BBOX "[x, y, w, h]".
            The CSV's Width and Height are ignored: a few rows are wrong, and the PNG is the truth.

    Returns:
        One record per CSV row (dataset "BUS-BRA").

    Raises:
        DatasetError: bus_data.csv is missing or malformed, or listed files are absent.
    """
    root = Path(root).absolute()
    table = root / "bus_data.csv"
    if not table.is_file():
        raise DatasetError(root, "not a BUS-BRA folder: bus_data.csv not found")
    problems = _Problems(root)
    records: list[SampleRecord] = []
    for line, row in enumerate(read_csv_table(table, required=("ID",)), start=2):
        identifier = _text(row.get("ID"))
        if identifier is None:
            problems.add(f"bus_data.csv line {line}: empty ID")
            continue
        image = root / "Images" / f"{identifier}.png"
        mask = root / "Masks" / f"{identifier.replace('bus_', 'mask_', 1)}.png"
        for path, kind in ((image, "image"), (mask, "mask")):
            if not path.is_file():
                problems.add(f"{kind} file not found: {path}")
        try:
            label = parse_label(row.get("Pathology"))
            box = parse_box(row.get("BBOX"))
        except ValueError as error:
            problems.add(f"bus_data.csv line {line}: {error}")
            continue
        case = _text(row.get("Case"))
        records.append(SampleRecord(
            id=identifier, image=str(image), masks=[str(mask)], label=label, box=box,
            birads=_text(row.get("BIRADS")), group=f"busbra:{case}" if case else None,
            scanner=_text(row.get("Device")), dataset="BUS-BRA"))
    problems.raise_if_any()
    if not records:
        raise DatasetError(table, "lists no images")
    return records


def read_datalist_sections(path: str | os.PathLike) -> dict[str, list[SampleRecord]]:
    """Read a datalist and keep its sections apart ({"training": [...], "validation": [...], ...}).

    A bare JSON list and a CSV file form one section, "training". See :func:`read_datalist`.
    """
    path = Path(path).absolute()
    if not path.is_file():
        raise DatasetError(path, "datalist file not found")
    if path.suffix.lower() == ".csv":
        sections: dict[str, list[Any]] = {"training": read_csv_table(path, required=("image",))}
    elif path.suffix.lower() == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetError(path, f"cannot be read as JSON ({error})") from error
        if isinstance(content, list):
            sections = {"training": content}
        elif isinstance(content, dict):
            sections = {key: value for key, value in content.items() if isinstance(value, list)}
            if not sections:
                raise DatasetError(path, 'holds no list of items (expected {"training": [...]} or a list)')
        else:
            raise DatasetError(path, 'expected {"training": [...]} or a list of items')
    else:
        raise DatasetError(path, "a datalist must be a .json or .csv file")
    problems = _Problems(path)
    records = {name: [_datalist_record(path, item, f"{name}[{index}]", problems)
                      for index, item in enumerate(items)] for name, items in sections.items()}
    problems.raise_if_any()
    return {name: [record for record in items if record is not None] for name, items in records.items()}


def read_datalist(path: str | os.PathLike, sections: tuple[str, ...] = DATALIST_SECTIONS) -> list[SampleRecord]:
    """Read a datalist: MONAI-style JSON or CSV, every field but the image optional.

    Item fields: "image" (required); "mask" (a path, a list of paths, or in CSV paths joined by ";"),
    "label" ("benign"/"malignant"/"normal" or 0/1), "box" ([x, y, w, h]), "birads", "group" or "patient"
    (the split unit), "scanner", and optionally "id" and "dataset" (default: the datalist's file name).
    Relative paths are relative to the datalist's folder.

    Args:
        path: the .json or .csv file.
        sections: JSON sections to read (a bare list or a CSV is the "training" section).

    Raises:
        DatasetError: unreadable file, malformed item, listed image or mask missing, or no item at all.
    """
    by_section = read_datalist_sections(path)
    records = [record for name in sections for record in by_section.get(name, [])]
    if not records:
        raise DatasetError(path, f"lists no images (sections read: {', '.join(sections)})")
    return records


def _datalist_record(datalist: Path, item: Any, where: str, problems: _Problems) -> SampleRecord | None:
    """Build one record of a datalist, noting its problems (missing files, bad fields) in ``problems``."""
    if not isinstance(item, dict) or _blank(item.get("image")):
        problems.add(f"item {where} has no image")
        return None
    image = _resolve(datalist, str(item["image"]))
    masks_field = item.get("mask")
    if isinstance(masks_field, (list, tuple)):
        mask_names = [str(name) for name in masks_field if not _blank(name)]
    else:
        mask_names = [] if _blank(masks_field) else [name for name in str(masks_field).split(";") if name.strip()]
    masks = [_resolve(datalist, name.strip()) for name in mask_names]
    ok = True
    for path, kind in [(image, "image")] + [(mask, "mask") for mask in masks]:
        if not path.exists():
            problems.add(f"{kind} file not found: {path}")
            ok = False
    try:
        label = parse_label(item.get("label"))
        box = parse_box(item.get("box"))
    except ValueError as error:
        problems.add(f"item {where} ({item['image']}): {error}")
        return None
    if not ok:
        return None
    dataset = _text(item.get("dataset")) or image_stem(datalist)
    group = _text(item.get("group")) or _text(item.get("patient"))
    written = Path(str(item["image"]).strip())
    # Without an "id", the image path as written (less its suffix) names the item uniquely.
    identifier = _text(item.get("id")) or (written.parent / image_stem(written)).as_posix()
    return SampleRecord(
        id=identifier, image=str(image), masks=[str(mask) for mask in masks], label=label, box=box,
        birads=_text(item.get("birads")), group=f"{dataset}:{group}" if group else None,
        scanner=_text(item.get("scanner")), dataset=dataset)


def _resolve(datalist: Path, name: str) -> Path:
    """A path from a datalist: absolute as written, else relative to the datalist's folder."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else datalist.parent / path


def read_dataset(path: str | os.PathLike) -> list[SampleRecord]:
    """Read a dataset, telling its layout from what is on disk.

    A folder with ``bus_data.csv`` is BUS-BRA; a folder with ``benign/`` or ``malignant/`` is BUSI;
    a ``.json`` or ``.csv`` file is a datalist.

    Raises:
        DatasetError: the path is missing, matches no layout, or holds no images.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "dataset not found")
    if path.is_dir():
        if (path / "bus_data.csv").is_file():
            return read_busbra(path)
        if (path / "benign").is_dir() or (path / "malignant").is_dir():
            return read_busi(path)
        raise DatasetError(path, "unknown dataset layout: expected a BUSI folder (benign/, malignant/, "
                                 "normal/), a BUS-BRA folder (bus_data.csv, Images/, Masks/) "
                                 "or a datalist file (.json or .csv)")
    if path.suffix.lower() in (".json", ".csv"):
        return read_datalist(path)
    raise DatasetError(path, "unknown dataset: expected a BUSI or BUS-BRA folder or a .json/.csv datalist")
