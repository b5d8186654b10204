"""What ``MFFMTCore.dicom_io.read_dicom`` makes of DICOM files, as one comparable summary.

Test helper (not a test module), imported by ``test_dicom_pydicom2.py`` under pydicom 3 and run as a
script under pydicom 2: ``python dicom_read_summary.py OUTPUT.npz FILE...`` writes, per file, its
pixels and a JSON record (pydicom version, spacing, region, notes, frames or the one-line error).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np


def summarise(paths: list[str]) -> tuple[dict, dict]:
    """(file -> record, file -> pixels) of ``read_dicom`` on each file; an error is a record too."""
    import pydicom

    from MFFMTCore.dicom_io import read_dicom

    records, pixels = {}, {}
    for path in paths:
        name = Path(path).name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = read_dicom(path)
        except Exception as error:
            records[name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        records[name] = {"spacing": image.spacing, "region": image.region, "notes": image.notes,
                         "multiframe": image.multiframe, "shape": list(image.pixels.shape),
                         "dtype": str(image.pixels.dtype)}
        pixels[name] = image.pixels
    records["pydicom"] = pydicom.__version__
    return records, pixels


def main(output: str, *paths: str) -> None:
    records, pixels = summarise(list(paths))
    np.savez_compressed(output, records=np.array(json.dumps(records)), **pixels)


if __name__ == "__main__":
    main(*sys.argv[1:])
