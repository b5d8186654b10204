"""The standard terminology of the "Lesion" segment (Slicer's TerminologyEntry tag).

Slicer stores what a segment contains as a ``TerminologyEntry`` tag of seven ``~``-separated parts:
terminology context name, category, type, type modifier, anatomic context name, anatomic region and
anatomic region modifier; each coded part is a ``scheme^value^meaning`` triplet (Slicer developer
guide, "Segmentations", TerminologyEntry tag). With it, DICOM SEG export from Slicer's DICOM module
writes the right codes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """One coded concept: coding scheme designator, code value and code meaning."""

    scheme: str = ""
    value: str = ""
    meaning: str = ""

    def serialize(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


NO_CODE = Code()


def terminology_entry(
    context: str,
    category: Code,
    type_: Code,
    type_modifier: Code = NO_CODE,
    anatomic_context: str = "",
    region: Code = NO_CODE,
    region_modifier: Code = NO_CODE,
) -> str:
    """Serialise a terminology entry the way ``vtkSegment`` tags store it.

    Args:
        context: segmentation terminology context, e.g. "Segmentation category and type - 3D Slicer
            General Anatomy list".
        category: segmented property category, e.g. SCT 49755003 "Morphologically Altered Structure".
        type_: segmented property type, e.g. SCT 4147007 "Mass".
        type_modifier: optional modifier of the type.
        anatomic_context: anatomic context name, e.g. "Anatomic codes - DICOM master list".
        region: anatomic region where the structure lies, e.g. SCT 76752008 "Breast".
        region_modifier: optional modifier of the region (e.g. left or right).
    """
    parts = [context, category.serialize(), type_.serialize(), type_modifier.serialize(), anatomic_context,
             region.serialize(), region_modifier.serialize()]
    return "~".join(parts)


SEGMENT_NAME = "Lesion"
# The terminology's recommended colour of a mass (RGB 144, 238, 144), as mffmt predict writes it.
SEGMENT_COLOR = (144 / 255, 238 / 255, 144 / 255)

LESION_TERMINOLOGY = terminology_entry(
    "Segmentation category and type - 3D Slicer General Anatomy list",
    Code("SCT", "49755003", "Morphologically Altered Structure"),
    Code("SCT", "4147007", "Mass"),
    anatomic_context="Anatomic codes - DICOM master list",
    region=Code("SCT", "76752008", "Breast"),
)
