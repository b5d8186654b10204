"""The lesion segment: its name, colour and standard terminology (one definition for every writer).

Slicer stores what a segment contains as a ``TerminologyEntry`` tag of seven ``~``-separated parts:
terminology context name, category, type, type modifier, anatomic context name, anatomic region and
anatomic region modifier; each coded part is a ``scheme^value^meaning`` triplet (Slicer developer
guide, "Segmentations", TerminologyEntry tag). slicerio writes the same entry from a dictionary.
With it, Slicer shows the segment as a breast mass and DICOM SEG export writes the right codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Code:
    """One coded concept: coding scheme designator, code value and code meaning."""

    scheme: str = ""
    value: str = ""
    meaning: str = ""

    def serialize(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"

    def as_list(self) -> list[str]:
        return [self.scheme, self.value, self.meaning]


NO_CODE = Code()


@dataclass(frozen=True)
class TerminologyEntry:
    """A segment's terminology.

    Args:
        context: segmentation terminology context, e.g. "Segmentation category and type - 3D Slicer
            General Anatomy list".
        category: segmented property category, e.g. SCT 49755003 "Morphologically Altered Structure".
        type: segmented property type, e.g. SCT 4147007 "Mass".
        type_modifier: optional modifier of the type.
        anatomic_context: anatomic context name, e.g. "Anatomic codes - DICOM master list".
        region: anatomic region where the structure lies, e.g. SCT 76752008 "Breast".
        region_modifier: optional modifier of the region (e.g. left or right).
    """

    context: str
    category: Code
    type: Code
    type_modifier: Code = NO_CODE
    anatomic_context: str = ""
    region: Code = NO_CODE
    region_modifier: Code = NO_CODE

    def tag(self) -> str:
        """The entry as ``vtkSegment`` stores it in its TerminologyEntry tag."""
        parts = [self.context, self.category.serialize(), self.type.serialize(), self.type_modifier.serialize(),
                 self.anatomic_context, self.region.serialize(), self.region_modifier.serialize()]
        return "~".join(parts)

    def slicerio(self) -> dict[str, Any]:
        """The entry as slicerio's ``terminology`` dictionary of a segment."""
        entry: dict[str, Any] = {"contextName": self.context, "category": self.category.as_list(),
                                 "type": self.type.as_list()}
        if self.type_modifier != NO_CODE:
            entry["typeModifier"] = self.type_modifier.as_list()
        if self.anatomic_context:
            entry["anatomicContextName"] = self.anatomic_context
        if self.region != NO_CODE:
            entry["anatomicRegion"] = self.region.as_list()
        if self.region_modifier != NO_CODE:
            entry["anatomicRegionModifier"] = self.region_modifier.as_list()
        return entry


SEGMENT_NAME = "Lesion"
# The terminology's recommended colour of a mass (RGB 144, 238, 144), as Slicer shows it.
SEGMENT_COLOR = (144 / 255, 238 / 255, 144 / 255)
#: Slicer's General Anatomy terminology: Morphologically Altered Structure / Mass, in the breast.
LESION_TERMINOLOGY = TerminologyEntry(
    "Segmentation category and type - 3D Slicer General Anatomy list",
    Code("SCT", "49755003", "Morphologically Altered Structure"),
    Code("SCT", "4147007", "Mass"),
    anatomic_context="Anatomic codes - DICOM master list",
    region=Code("SCT", "76752008", "Breast"),
)
