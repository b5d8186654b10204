"""DICOM results for PACS: Segmentation and TID 1500 Structured Report, read back with highdicom."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_samples import capture, region_item, ultrasound_dicom
from PIL import Image
from pydicom.sr.codedict import codes

from MFFMTCore.inference.batch import predict_files
from MFFMTCore.inference.dicom_export import CLASS_CONCEPT, PROBABILITY_CONCEPT, write_dicom_results
from MFFMTCore.inference.outputs import DEFAULT_OUTPUTS

LESION = (60, 40, 40, 20)


def read_back(paths):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom warns about the synthetic patient name
        return hd.seg.segread(paths["dicom_segmentation"]), hd.sr.srread(paths["dicom_report"])


def source_references(segmentation):
    return [item for group in segmentation.PerFrameFunctionalGroupsSequence
            for derivation in group.DerivationImageSequence for item in derivation.SourceImageSequence]


def test_calibrated_frame_segmentation_and_report_reference_the_source(tmp_path, dark_lesion_predictor):
    source_path = ultrasound_dicom(tmp_path / "us.dcm", capture(lesion=LESION), regions=[region_item()])
    source = pydicom.dcmread(source_path)
    result = dark_lesion_predictor.predict(source_path)
    paths = write_dicom_results(result, tmp_path / "out", "us")
    segmentation, report = read_back(paths)

    assert segmentation.StudyInstanceUID == source.StudyInstanceUID
    assert segmentation.PatientID == source.PatientID
    assert (segmentation.Rows, segmentation.Columns, segmentation.NumberOfFrames) == (source.Rows, source.Columns, 1)
    (reference,) = source_references(segmentation)
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    np.testing.assert_array_equal(segmentation.pixel_array.reshape(source.Rows, source.Columns), result.label[0])

    groups = report.content.get_planar_roi_measurement_groups()
    components = result.frames[0].components
    assert len(groups) == len(components) >= 1
    group, component = groups[0], components[0]
    values = {item.name: item for item in group.get_measurements()}
    assert values[codes.SCT.LongAxis].value == pytest.approx(component.measurements.long_axis.length_mm, rel=1e-6)
    assert values[codes.SCT.LongAxis].unit.value == "mm"
    assert values[codes.SCT.ShortAxis].value == pytest.approx(component.measurements.perpendicular_axis.length_mm,
                                                             rel=1e-6)
    assert values[codes.SCT.Area].value == pytest.approx(component.area_mm2, rel=1e-6)
    assert values[codes.SCT.Area].unit.value == "mm2"
    assert values[PROBABILITY_CONCEPT].value == pytest.approx(result.frames[0].p_malignant, rel=1e-6)
    evaluations = {item.name: item.value.meaning for item in group.get_qualitative_evaluations()}
    assert evaluations[CLASS_CONCEPT] == result.frames[0].prediction == "malignant"
    assert evaluations[codes.DCM.Orientation] == component.measurements.orientation
    (segment_reference, source_reference) = group.referenced_segmentation_frame
    assert segment_reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == segmentation.SOPInstanceUID
    assert source_reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    evidence = {item.ReferencedSOPInstanceUID for study in report.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert {source.SOPInstanceUID, segmentation.SOPInstanceUID} <= evidence


def test_clip_segmentation_is_its_key_frame_referenced_by_number(tmp_path, dark_lesion_predictor):
    frames = capture(frames=3, lesion=None)
    frames[2] = capture(lesion=LESION, seed=5)[0]  # the lesion shows in frame 2 only
    source_path = ultrasound_dicom(tmp_path / "clip.dcm", frames, regions=[region_item()])
    source = pydicom.dcmread(source_path)
    result = dark_lesion_predictor.predict(source_path)
    assert result.key_frame == 2
    segmentation, report = read_back(write_dicom_results(result, tmp_path / "out", "clip"))
    assert segmentation.NumberOfFrames == 1
    (reference,) = source_references(segmentation)
    assert reference.ReferencedSOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID and reference.ReferencedFrameNumber == 3
    (instance,) = segmentation.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert instance.ReferencedSOPClassUID == source.SOPClassUID and "ReferencedFrameNumber" not in instance
    np.testing.assert_array_equal(segmentation.pixel_array.reshape(source.Rows, source.Columns), result.label[2])
    assert len(report.content.get_planar_roi_measurement_groups()) == len(result.frames[2].components)


def test_uncalibrated_measurements_are_in_pixels(tmp_path, dark_lesion_predictor):
    source_path = ultrasound_dicom(tmp_path / "plain.dcm", capture(lesion=LESION))
    result = dark_lesion_predictor.predict(source_path)
    _, report = read_back(write_dicom_results(result, tmp_path / "out", "plain"))
    values = {item.name: item for item in report.content.get_planar_roi_measurement_groups()[0].get_measurements()}
    assert values[codes.SCT.LongAxis].unit.value == "{pixel}"
    assert values[codes.SCT.LongAxis].value == pytest.approx(result.frames[0].components[0].measurements
                                                            .long_axis.length_px, rel=1e-6)


def test_non_dicom_input_has_no_dicom_results(tmp_path, dark_lesion_predictor):
    result = dark_lesion_predictor.predict(capture()[0])
    with pytest.raises(ValueError, match="DICOM input"):
        write_dicom_results(result, tmp_path, "x")


def test_batch_writes_dicom_results_for_dicom_inputs_only(tmp_path, dark_lesion_predictor):
    dicom_input = ultrasound_dicom(tmp_path / "us.dcm", capture(lesion=LESION), regions=[region_item()])
    png_input = tmp_path / "capture.png"
    Image.fromarray(capture()[0]).save(png_input)
    output = tmp_path / "out"
    summary = predict_files(dark_lesion_predictor, [dicom_input, png_input], output,
                            outputs=(*DEFAULT_OUTPUTS, "dicom"))
    assert [outcome.status for outcome in summary.outcomes] == ["done", "done"]
    assert (output / "us_seg.dcm").is_file() and (output / "us_sr.dcm").is_file()
    assert not (output / "capture_seg.dcm").exists()
    document = json.loads((output / "results.json").read_text())
    assert document["inputs"][0]["outputs"]["dicom_report"].endswith("us_sr.dcm")
    assert document["settings"]["outputs"] == ["seg", "probability", "overlay", "dicom"]


def test_header_without_patient_id_and_acr_nema_times_gets_dicom_results(tmp_path, dark_lesion_predictor):
    """pydicom's ExplVR_BigEnd.dcm (a 1997 LOGIQ 700 capture): no PatientID, StudyTime '14:04:38'."""
    source_path = Path(pydicom.data.get_testdata_file("ExplVR_BigEnd.dcm"))
    summary = predict_files(dark_lesion_predictor, [source_path], tmp_path / "out", outputs=(*DEFAULT_OUTPUTS, "dicom"))
    (outcome,) = summary.outcomes
    assert outcome.status == "done", outcome.error
    segmentation, report = read_back({name: outcome.outputs[name] for name in ("dicom_segmentation", "dicom_report")})
    source = pydicom.dcmread(source_path)
    for document in (segmentation, report):
        assert document.PatientID == ""  # Type 2: present, empty, as the source had none
        assert document.StudyInstanceUID == source.StudyInstanceUID
        assert (document.StudyDate, document.StudyTime) == ("19970424", "140438")
    (reference,) = source_references(segmentation)
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID


@pytest.mark.parametrize("missing", [("SOPInstanceUID",), ("StudyInstanceUID", "SeriesInstanceUID")])
def test_header_without_uids_to_reference_keeps_the_other_results_and_says_why(
        tmp_path, dark_lesion_predictor, missing):
    source_path = ultrasound_dicom(tmp_path / "us.dcm", capture(lesion=LESION), regions=[region_item()])
    dataset = pydicom.dcmread(source_path)
    for keyword in missing:
        delattr(dataset, keyword)
    dataset.save_as(source_path, enforce_file_format=False)
    output = tmp_path / "out"
    summary = predict_files(dark_lesion_predictor, [source_path], output, outputs=(*DEFAULT_OUTPUTS, "dicom"))
    (outcome,) = summary.outcomes
    assert outcome.status == "done" and set(outcome.outputs) == {"segmentation", "probability", "overlay"}
    assert not (output / "us_seg.dcm").exists() and not (output / "us_sr.dcm").exists()
    (entry,) = json.loads((output / "results.json").read_text())["inputs"]
    assert entry["notes"] == [f"DICOM results not written: the file has no {', '.join(missing)} for them to "
                              "reference"]
    rows = json.loads((output / "results.json").read_text())["rows"]
    assert rows[0]["prediction"] == "malignant" and rows[0]["lesion_area_mm2"] > 0
