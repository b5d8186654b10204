"""Files that ship inside the package: the bundled BUS-BRA sample images."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


def sample_images() -> list[Path]:
    """The bundled sample images (BUS-BRA, see ``samples/README.md``), sorted by name."""
    return sorted(SAMPLES_DIR.glob("bus_*.png"))


def sample_datalist() -> Path:
    """The datalist CSV of the bundled samples (image, mask, label, birads, patient, scanner)."""
    return SAMPLES_DIR / "samples.csv"
