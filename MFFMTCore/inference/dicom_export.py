"""Results back to PACS: a DICOM Segmentation and a DICOM Structured Report (TID 1500) per DICOM input.

For a prediction whose input was a DICOM file (:attr:`FrameStack.dicom`), written with highdicom:

- ``<stem>_seg.dcm``: a binary DICOM Segmentation with the "Lesion" segment (category
  Morphologically abnormal structure, type Lesion; algorithm MFFMT), on the source's pixel grid,
  in the source's study, referencing the source instance (and its frame);
- ``<stem>_sr.dcm``: an Enhanced SR "Imaging Measurement Report" (TID 1500) with, per lesion
  region of the reported frame, a planar ROI measurement group (TID 1410) referencing the
  segment, holding the long axis, the short (perpendicular) axis and the area (mm and mm² where the
  input is calibrated, pixels otherwise), the orientation, the class (or "not breast B-mode" when
  the input check flagged the frame) and the probability of the positive class (none for a flagged
  frame, which also has no lesion). A frame without lesion gets one group for the frame with the
  class and probability only.

The reported frame is frame 0 of a single-frame input and the key frame of a clip. For a clip, the
Segmentation holds that frame only: highdicom (0.28) builds Segmentations of multi-frame sources
only for images in a patient coordinate system, which ultrasound cine loops are not; it references
the source frame by number.

Class, orientation and probability concepts without a standard code use the private coding
scheme :data:`SCHEME` ("99MFFMT"), as DICOM allows for local codes.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UltrasoundImageStorage
from pydicom.valuerep import DA, TM

from MFFMTCore.base.measurements import LesionMeasurements
from MFFMTCore.dicom_io import pixel_spacing
from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import atomic_path
from MFFMTCore.inference.dicom_results import NOT_WRITTEN, dicom_output_paths
from MFFMTCore.inference.result import FrameResult, PredictionResult
from MFFMTCore.version import __version__

SCHEME = "99MFFMT"
CLASS_CONCEPT = hd.sr.CodedConcept("class", SCHEME, "Lesion class (MFFMT)")
PROBABILITY_CONCEPT = hd.sr.CodedConcept("p-positive", SCHEME, "Probability of the positive class (MFFMT)")
ORIENTATION_CONCEPT = codes.DCM.Orientation
PIXEL_UNIT = hd.sr.CodedConcept("{pixel}", "UCUM", "pixel")
SQUARE_PIXEL_UNIT = hd.sr.CodedConcept("{pixel}2", "UCUM", "square pixel")
UNITY = hd.sr.CodedConcept("1", "UCUM", "no units")
SERIES_NUMBERS = {"segmentation": 9301, "report": 9302}
MANUFACTURER = "MFFMTSlicer"
# Attributes of the source that the results must repeat or reference (Type 1: a value is required,
# nothing we could make up would be the source's) and those the results copy that may be empty
# (Type 2 of the Patient and General Study modules, PS3.3 C.7.1.1 and C.7.2.1).
REQUIRED_SOURCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
EMPTY_ALLOWED_ATTRIBUTES = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                            "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def _new_instance(kind: str) -> dict:
    """The identity of a new instance we write (``kind``: "segmentation" or "report"), in its own new series."""
    return {"series_instance_uid": hd.UID(), "series_number": SERIES_NUMBERS[kind], "sop_instance_uid": hd.UID(),
            "instance_number": 1, "manufacturer": MANUFACTURER}


def _value_code(text: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(text.replace(" ", "-")[:16], SCHEME, text)


def _algorithm() -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name="MFFMT", version=__version__)


def _segmentation(source: Dataset, label: np.ndarray, frame: int, multiframe: bool) -> hd.seg.Segmentation:
    """The DICOM Segmentation of ``label``, the (H, W) label map of the source's frame ``frame``."""
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="MFFMT", version=__version__, family=codes.cid7162.ArtificialIntelligence),
    )
    single = copy.deepcopy(source)  # Dataset.copy() is shallow: its elements are the source's own
    if multiframe:
        # highdicom segments a multi-frame ultrasound source (no patient coordinates, no functional
        # groups) only as a single-frame image: give it a one-frame view of the source, then put the
        # source's own SOP class and the frame's number into the references.
        del single.NumberOfFrames
        single.SOPClassUID = UltrasoundImageStorage
    segmentation = hd.seg.Segmentation(
        source_images=[single],
        pixel_array=label.astype(np.uint8)[np.newaxis],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        **_new_instance("segmentation"),
        manufacturer_model_name="MFFMT",
        software_versions=__version__,
        device_serial_number="none",
        series_description="MFFMT lesion segmentation",
        omit_empty_frames=False,
    )
    # General Image module, Type 2C where there is no Image Orientation (Patient): the source's
    # row and column directions (e.g. A\\F), or empty where the source does not say.
    segmentation.PatientOrientation = source.get("PatientOrientation")
    if multiframe:
        derivations = [item for group in segmentation.PerFrameFunctionalGroupsSequence
                       for derivation in group.DerivationImageSequence for item in derivation.SourceImageSequence]
        instances = [item for series in segmentation.ReferencedSeriesSequence
                     for item in series.ReferencedInstanceSequence]
        for item in derivations + instances:
            item.ReferencedSOPClassUID = source.SOPClassUID
        # The frame goes where the Image SOP Instance Reference Macro has it; the series' instance
        # list names instances only (dciodvfy: "not present in standard DICOM IOD" there).
        for item in derivations:
            item.ReferencedFrameNumber = frame + 1
    return segmentation


def _lengths(measured: LesionMeasurements, area_px: int, area_mm2: float | None) -> list[hd.sr.Measurement]:
    calibrated = measured.long_axis.length_mm is not None and area_mm2 is not None
    long_axis = measured.long_axis.length_mm if calibrated else measured.long_axis.length_px
    short_axis = measured.perpendicular_axis.length_mm if calibrated else measured.perpendicular_axis.length_px
    length_unit = codes.UCUM.Millimeter if calibrated else PIXEL_UNIT
    return [
        hd.sr.Measurement(name=codes.SCT.LongAxis, value=float(long_axis), unit=length_unit, algorithm_id=_algorithm()),
        hd.sr.Measurement(name=codes.SCT.ShortAxis, value=float(short_axis), unit=length_unit,
                          algorithm_id=_algorithm()),
        hd.sr.Measurement(name=codes.SCT.Area, value=float(area_mm2 if calibrated else area_px),
                          unit=codes.UCUM.SquareMillimeter if calibrated else SQUARE_PIXEL_UNIT,
                          algorithm_id=_algorithm()),
    ]


def _groups(
    finding: FrameResult, segmentation: hd.seg.Segmentation, source: Dataset, frame: int, positive: str
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    referenced = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        frame_number=1,
        segment_number=1,
        source_image=hd.sr.SourceImageForSegmentation(
            source.SOPClassUID, source.SOPInstanceUID,
            referenced_frame_numbers=[frame + 1] if "NumberOfFrames" in source else None),
    )
    # PS3.3 Table 10-3: a reference to a Segmentation names its segment only where it names no
    # frame; highdicom writes both (dciodvfy: "shall not be present"). Frame 1 holds segment 1 only.
    for item in referenced[0].ReferencedSOPSequence:
        if "ReferencedFrameNumber" in item:
            del item.ReferencedSegmentNumber
    verdict = [
        hd.sr.QualitativeEvaluation(CLASS_CONCEPT, _value_code(finding.prediction)),
    ]
    # A flagged frame has no probability: the report holds its class ("not breast B-mode") only.
    probability = [] if finding.probabilities[positive] is None else [hd.sr.Measurement(
        name=PROBABILITY_CONCEPT, value=float(finding.probabilities[positive]), unit=UNITY,
        algorithm_id=_algorithm())]
    groups = []
    components = finding.components or [None]
    for number, component in enumerate(components, start=1):
        measurements = list(probability)
        evaluations = list(verdict)
        if component is not None and component.measurements is not None:
            measurements = _lengths(component.measurements, component.area_px, component.area_mm2) + measurements
            evaluations.append(hd.sr.QualitativeEvaluation(
                ORIENTATION_CONCEPT, _value_code(component.measurements.orientation)))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=hd.UID(), identifier=f"Lesion {number}" if component is not None else "Frame"),
            referenced_segment=referenced,
            finding_type=codes.SCT.Lesion,
            finding_sites=[hd.sr.FindingSite(codes.SCT.Breast)],
            algorithm_id=_algorithm(),
            measurements=measurements,
            qualitative_evaluations=evaluations,
        ))
    return groups


def referable_source(header: Dataset, source: str) -> Dataset:
    """A copy of a DICOM input's header that results can reference: Type 2 attributes it lacks are
    added empty (as the standard allows), a PixelSpacing that was not believed is left out; a
    missing Type 1 UID cannot be made up.

    Raises:
        MFFMTError: the header lacks one of :data:`REQUIRED_SOURCE_ATTRIBUTES`.
    """
    missing = [keyword for keyword in REQUIRED_SOURCE_ATTRIBUTES if not str(header.get(keyword, "") or "").strip()]
    if missing:
        raise MFFMTError(source, f"{NOT_WRITTEN}: the file has no {', '.join(missing)} for them to reference")
    referable = copy.deepcopy(header)
    if "PixelSpacing" in referable and pixel_spacing(referable, []) is None:
        del referable.PixelSpacing  # the results would repeat a spacing that was not believed
    for keyword in EMPTY_ALLOWED_ATTRIBUTES:
        if keyword not in referable:
            setattr(referable, keyword, None)
        elif keyword in _DATE_TIME:
            setattr(referable, keyword, _conformant(_DATE_TIME[keyword], referable[keyword].value))
    return referable


# Dates and times the results copy, with their value representations.
_DATE_TIME = {"PatientBirthDate": DA, "StudyDate": DA, "StudyTime": TM}


def _conformant(representation: type, value) -> str | None:
    """A date or time as DICOM 3 writes it: ACR-NEMA's "yyyy.mm.dd" and "hh:mm:ss" (which PS3.5 6.2
    asks readers to accept) without their separators; a value that does not parse is left empty."""
    text = str(value or "").strip().replace("." if representation is DA else ":", "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns before it raises
            return str(representation(text)) if text else None
    except ValueError:
        return None


def write_dicom_results(result: PredictionResult, directory: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Write the DICOM Segmentation and Structured Report of ``result``; returns name -> path.

    Raises:
        MFFMTError: the input was not a DICOM file, or its header lacks a UID to reference.
    """
    dicom = result.input_frames.dicom if result.input_frames is not None else None
    if dicom is None:
        raise MFFMTError(result.source, "DICOM results need a DICOM input")
    source = referable_source(dicom.header, result.source)
    with warnings.catch_warnings():
        # highdicom warns about source attributes it cannot fix (e.g. a one-part patient name):
        # they are the scanner's, copied as they are.
        warnings.filterwarnings("ignore", category=UserWarning, module="highdicom")
        segmentation, document = _documents(result, source)
    paths = dicom_output_paths(directory, stem)
    for name, dataset in (("dicom_segmentation", segmentation), ("dicom_report", document)):
        with atomic_path(paths[name]) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
    return paths


def _documents(result: PredictionResult, source: Dataset) -> tuple[hd.seg.Segmentation, hd.sr.EnhancedSR]:
    """The Segmentation and the Structured Report of ``result`` for its DICOM ``source``."""
    frame = result.key_frame
    multiframe = "NumberOfFrames" in source
    segmentation = _segmentation(source, result.label_frame(frame), frame, multiframe)
    finding = result.frames[frame]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="MFFMT", manufacturer_name=MANUFACTURER, model_name=f"MFFMT {__version__}"),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.UltrasonographyOfBreast,
        imaging_measurements=_groups(finding, segmentation, source, frame, result.class_names[-1]),
    )
    document = hd.sr.EnhancedSR(
        evidence=[source, segmentation],
        content=report,
        **_new_instance("report"),
        series_description="MFFMT lesion report",
        is_complete=True,
    )
    return segmentation, document
