"""The DICOM cases of issue 21's hostile-user probe: lying and broken headers through ``mffmt predict --dicom``.

Writes the cases (a bundled BUS-BRA frame with a lesion, in ultrasound DICOM files whose headers lie or
break in one way each; pydicom's ``ExplVR_BigEnd.dcm``; truncated files), runs them as one batch with
the shipped default model, and prints one table row per case: status, the lesion area and long axis
in mm, the imaging region, the DICOM files written, and the error or notes. Run it once per code base
and compare::

    PYTHONPATH=/path/to/old/checkout python experiments/bad_dicom_cases.py > before.md
    python experiments/bad_dicom_cases.py > after.md
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import RLELossless

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))
from dicom_samples import region_item, ultrasound_dicom  # noqa: E402  (a test helper, not a package)


def breast() -> np.ndarray:
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(REPO / "MFFMTCore" / "samples" / "bus_0012-r.png")))
    return (pixels[..., 0] if pixels.ndim == 3 else pixels)[np.newaxis]


def rewritten(path: Path, change) -> Path:
    dataset = pydicom.dcmread(path)
    change(dataset)
    dataset.save_as(path, enforce_file_format=False)
    return path


def truncated(source: Path, path: Path, share: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])
    return path


def cases(folder: Path) -> dict[str, Path]:
    frame = breast()
    height, width = frame.shape[1:]
    whole = (0, 0, width - 1, height - 1)

    def us(name: str, regions=None, **options) -> Path:
        return ultrasound_dicom(folder / f"{name}.dcm", frame, regions=regions, **options)

    def without_location():
        item = region_item(box=whole)
        del item.RegionLocationMaxX1
        return item

    def one_valued_pixel_spacing(dataset):
        dataset._dict[Tag("PixelSpacing")] = RawDataElement(Tag("PixelSpacing"), "DS", 4, b"0.2 ", 0, False, True)

    found = {
        "calibrated (0.1 mm)": us("calibrated", [region_item(box=whole, delta_cm=(0.01, 0.01))]),
        "ExplVR_BigEnd.dcm (no PatientID)": Path(get_testdata_file("ExplVR_BigEnd.dcm")),
        "no SOPInstanceUID": rewritten(us("no_sop_uid", [region_item(box=whole, delta_cm=(0.01, 0.01))]),
                                       lambda dataset: delattr(dataset, "SOPInstanceUID")),
        "5x5 calibrated region": us("region_5x5", [region_item(box=(100, 100, 104, 104), delta_cm=(0.01, 0.01))]),
        "100 regions, a 6x6 corner first": us("regions_100", [
            region_item(box=(0, 0, 5, 5), delta_cm=(0.5, 0.5)),
            *[region_item(box=(10 + i, 0, 19 + i, 9), delta_cm=(0.1, 0.1)) for i in range(98)],
            region_item(box=whole, delta_cm=(0.01, 0.01))]),
        "deltas 1e10 cm": us("delta_1e10", [region_item(box=whole, delta_cm=(1e10, 1e10))]),
        "deltas 0.01 x 100 cm": us("delta_aniso", [region_item(box=whole, delta_cm=(0.01, 100.0))]),
        "delta inf": us("delta_inf", [region_item(box=whole, delta_cm=(float("inf"), 0.01))]),
        "deltas 1e300": us("delta_1e300", [region_item(box=whole, delta_cm=(1e300, 1e300))]),
        "deltas 1e-300": us("delta_1e-300", [region_item(box=whole, delta_cm=(1e-300, 1e-300))]),
        "region without its location": us("region_no_location", [without_location()]),
        "one-valued PixelSpacing": rewritten(us("pixel_spacing_1"), one_valued_pixel_spacing),
    }
    found["truncated (uncompressed)"] = truncated(found["calibrated (0.1 mm)"], folder / "cut.dcm")
    found["truncated (RLE)"] = truncated(us("rle", transfer_syntax=RLELossless), folder / "cut_rle.dcm")
    return found


def main() -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        inputs = cases(folder)
        output = folder / "out"
        run = subprocess.run([sys.executable, "-m", "MFFMTCore", "predict", *map(str, inputs.values()), "--output",
                              str(output), "--dicom", "--progress", "none", "--threads", "1"],
                             capture_output=True, text=True, timeout=1200)
        document = json.loads((output / "results.json").read_text()) if (output / "results.json").exists() else {}
        entries = {entry["input"]: entry for entry in document.get("inputs", [])}
        rows = {}
        for row in document.get("rows", []):
            rows.setdefault(row["input"], row)
        print(f"mffmt predict --dicom: exit {run.returncode}\n")
        print("| case | status | area mm² | long axis mm | imaging region | DICOM files | error or notes |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for title, path in inputs.items():
            key = str(path.absolute())
            entry, row = entries.get(key, {}), rows.get(key, {})
            region = entry.get("imaging_region") or {}
            dicom = [name for name in ("dicom_segmentation", "dicom_report") if name in entry.get("outputs", {})]
            said = entry.get("error") or "; ".join(entry.get("notes", []))
            area, axis = row.get("lesion_area_mm2"), row.get("long_axis_mm")
            print(f"| {title} | {entry.get('status', '-')} | {area if area is None else f'{area:.4g}'} | "
                  f"{axis if axis is None else f'{axis:.4g}'} | {region.get('method', '-')} {region.get('box', '')} | "
                  f"{', '.join(dicom) or '-'} | {said[-150:]} |")


if __name__ == "__main__":
    main()
