"""The Python packages MFFMTCore needs at run time, with their version ranges and how to install them.

The list holds the ``dependencies`` of the project's pyproject.toml with the same version ranges,
and every other package MFFMTCore imports (tests keep both true). The Slicer module checks them on
first use; how each one is installed there differs: torch through the PyTorch extension (it picks
the build for the machine's GPU), packages Slicer ships itself (SimpleITK, numpy, pydicom) never
(pip must not replace Slicer's own builds), the rest with pip.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    """One package MFFMTCore needs.

    Args:
        name: distribution name (as pip knows it).
        specifier: version range, e.g. ">=2.2,<3".
        module: name to import.
        installer: "pytorch" (PyTorch extension), "pip", or "bundled" (ships with Slicer).
        only_with: another requirement (e.g. "pydicom>=3") without which this one is neither needed
            nor installed: installing it would replace a package Slicer bundles.
    """

    name: str
    specifier: str
    module: str
    installer: str = "pip"
    only_with: str | None = None

    def __str__(self) -> str:
        return f"{self.name}{self.specifier}"


REQUIREMENTS = (
    Requirement("torch", ">=2.2,<3", "torch", "pytorch"),
    Requirement("monai", ">=1.6,<2", "monai"),
    Requirement("SimpleITK", ">=2.3", "SimpleITK", "bundled"),
    Requirement("numpy", ">=1.24", "numpy", "bundled"),
    Requirement("safetensors", ">=0.4", "safetensors"),
    Requirement("tqdm", ">=4.60", "tqdm"),
    Requirement("matplotlib", ">=3.7", "matplotlib"),
    Requirement("pillow", ">=10.1", "PIL"),
    Requirement("pydicom", ">=2.4,<4", "pydicom", "bundled"),  # 2.4: Slicer 5.10 bundles 2.4.4
    Requirement("pylibjpeg", ">=2.0,<3", "pylibjpeg"),
    Requirement("pylibjpeg-libjpeg", ">=2.1,<3", "libjpeg"),
    Requirement("pylibjpeg-openjpeg", ">=2.3,<3", "openjpeg"),
    # The DICOM SEG and SR; highdicom needs pydicom 3, and pip would put it over the pydicom 2.4 that
    # Slicer 5.10 bundles: there MFFMT predicts DICOM inputs without them (a note says so).
    Requirement("highdicom", ">=0.28,<1", "highdicom", only_with="pydicom>=3"),
    Requirement("scipy", ">=1.10", "scipy"),
    Requirement("slicerio", ">=1.1", "slicerio"),
    Requirement("pynrrd", ">=1.0,<2", "nrrd"),  # the headers of maps streamed to disk
    Requirement("zlib-ng", ">=0.5,<2", "zlib_ng"),  # their gzip compression, at ITK's speed
)
