"""Ultrasound DICOM reading: colour encodings, compression, clips, and the Sequence of Ultrasound Regions.

Synthetic files (made here with pydicom) check known values; the real ultrasound files that ship
with pydicom check what a scanner's capture gives.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from dicom_samples import SCAN, capture, region_item, ultrasound_dicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless
from scipy import ndimage

from MFFMTCore.dicom_io import calibrated_region, read_dicom
from MFFMTCore.files import ImageReadError, is_dicom_file
from MFFMTCore.inference import as_frame_stack
from MFFMTCore.inference.imaging_region import detect_imaging_region, square_opening

BOX = (SCAN[0], SCAN[1], SCAN[2] - SCAN[0] + 1, SCAN[3] - SCAN[1] + 1)


def test_grey_file_with_tissue_region_gives_mm_spacing_and_region(tmp_path):
    pixels = capture()
    path = ultrasound_dicom(tmp_path / "a.dcm", pixels, regions=[region_item(delta_cm=(0.02, 0.03))])
    image = read_dicom(path)
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.spacing == pytest.approx((0.2, 0.3))  # cm -> mm, (column, row)
    assert image.region == BOX
    assert not image.multiframe and image.notes == []


@pytest.mark.parametrize(
    "item",
    [
        region_item(units=(4, 3)),  # seconds along x: an M-mode or Doppler trace, not tissue in cm
        region_item(data_type=2),  # colour flow region
        region_item(spatial_format=3),  # spectral
        region_item(delta_cm=(0.0, 0.0)),
    ],
)
def test_regions_of_other_kinds_units_or_without_deltas_are_ignored(tmp_path, item):
    path = ultrasound_dicom(tmp_path / "a.dcm", capture(), regions=[item])
    image = read_dicom(path)
    assert image.spacing is None and image.region is None
    stack = as_frame_stack(path)
    assert not stack.geometry.spacing_known and stack.region is None


def test_first_calibrated_tissue_region_is_used_after_a_doppler_region(tmp_path):
    doppler = region_item(box=(0, 100, 159, 119), spatial_format=3, data_type=3, units=(4, 7))
    path = ultrasound_dicom(tmp_path / "a.dcm", capture(), regions=[doppler, region_item(delta_cm=(0.01, 0.01))])
    image = read_dicom(path)
    assert image.region == BOX and image.spacing == pytest.approx((0.1, 0.1))


def test_region_cut_on_one_axis_is_clipped_resized_capture_is_not_calibrated():
    tissue = region_item(box=(10, 20, 159, 300)).copy()
    from MFFMTCore.dicom_io import UltrasoundRegion

    region = UltrasoundRegion.from_item(tissue)
    chosen, box, notes = calibrated_region([region], (120, 160))
    assert chosen is region and box == (10, 20, 150, 100) and "cut" in notes[0]
    resized = UltrasoundRegion.from_item(region_item(box=(10, 20, 319, 239)))
    chosen, box, notes = calibrated_region([resized], (120, 160))
    assert chosen is None and box is None and "resized" in notes[0]


def test_file_without_calibration_keeps_unknown_spacing(tmp_path):
    path = ultrasound_dicom(tmp_path / "a.dcm", capture())
    stack = as_frame_stack(path)
    assert stack.geometry.spacing == (1.0, 1.0) and not stack.geometry.spacing_known


def test_multiframe_clip_is_a_3d_stack_with_calibrated_spacing(tmp_path):
    pixels = capture(frames=4)
    path = ultrasound_dicom(tmp_path / "clip.dcm", pixels, regions=[region_item()])
    stack = as_frame_stack(path)
    assert stack.num_frames == 4 and stack.geometry.dimension == 3
    assert stack.geometry.spacing == pytest.approx((0.2, 0.3, 1.0)) and stack.geometry.spacing_known
    np.testing.assert_array_equal(stack.grey(0, 4), pixels.astype(np.float32))
    assert stack.region.box == BOX and stack.region.method == "dicom"


def test_single_frame_multiframe_object_and_rle_compression(tmp_path):
    pixels = capture(frames=1)
    path = ultrasound_dicom(tmp_path / "one.dcm", pixels, multiframe=True, transfer_syntax=RLELossless)
    image = read_dicom(path)
    assert image.multiframe and image.pixels.shape == (1, *pixels.shape[1:])
    np.testing.assert_array_equal(image.pixels, pixels)


def test_rgb_and_ybr_full_become_the_same_rgb(tmp_path):
    grey = capture()[0]
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)[None]
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(rgb[0], "RGB", "YBR_FULL")[None]
    from_rgb = read_dicom(ultrasound_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")).pixels
    from_ybr = read_dicom(ultrasound_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL")).pixels
    np.testing.assert_array_equal(from_rgb, rgb)
    assert np.abs(from_ybr.astype(int) - rgb.astype(int)).max() <= 2  # 8-bit YCbCr round trip


def test_palette_colour_is_looked_up(tmp_path):
    indices = capture()
    palette = np.stack([np.arange(256), np.arange(256)[::-1], np.full(256, 7)], axis=1)
    image = read_dicom(ultrasound_dicom(tmp_path / "p.dcm", indices, photometric="PALETTE COLOR", palette=palette))
    assert image.pixels.shape == (1, *indices.shape[1:], 3)
    np.testing.assert_array_equal(image.pixels[0], palette[indices[0]])


def test_jpeg2000_lossless_round_trip(tmp_path):
    pixels = capture()
    image = read_dicom(ultrasound_dicom(tmp_path / "j.dcm", pixels, transfer_syntax=JPEG2000Lossless))
    np.testing.assert_array_equal(image.pixels, pixels)


def test_monochrome1_is_inverted(tmp_path):
    pixels = capture()
    image = read_dicom(ultrasound_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    assert image.pixels[0, 50, 100] == pixels.max() - pixels[0, 50, 100]


def test_broken_files_are_one_line_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.dcm: file is empty"):
        read_dicom(empty)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(ImageReadError, match="garbage.dcm"):
        read_dicom(garbage)


def test_dicom_without_suffix_is_recognised_by_its_preamble(tmp_path):
    path = ultrasound_dicom(tmp_path / "a.dcm", capture())
    bare = tmp_path / "IM0001"
    bare.write_bytes(path.read_bytes())
    assert is_dicom_file(bare)
    assert as_frame_stack(bare).dicom is not None


# --- the real ultrasound files that ship with pydicom -------------------------------------------------


def test_real_palette_capture_is_calibrated_from_its_region():
    stack = as_frame_stack(get_testdata_file("examples_palette.dcm"))
    # Region (120, 60)-(800, 518), PhysicalDeltaX/Y 0.0262 cm; the file keeps 350 of its 600 rows.
    assert stack.geometry.spacing_known
    assert stack.geometry.spacing == pytest.approx((0.2622878766, 0.2622878766))
    assert stack.region.box == (120, 60, 680, 290)
    assert stack.components == 3 and stack.num_frames == 1


def test_real_ybr_cine_decodes_30_rgb_frames_and_refuses_its_resized_calibration():
    stack = as_frame_stack(get_testdata_file("examples_ybr_color.dcm"))
    assert stack.num_frames == 30 and stack.components == 3 and stack.geometry.dimension == 3
    assert not stack.geometry.spacing_known and stack.region is None
    assert "resized" in stack.dicom.notes[0]
    frame = stack.pixels[0].astype(int)
    assert np.abs(frame[..., 0] - frame[..., 2]).mean() < 10  # a grey-scale scan, so R ~ B after YBR -> RGB


@pytest.mark.parametrize("name", ["examples_jpeg2k.dcm", "examples_rgb_color.dcm"])
def test_real_colour_captures_decode(name):
    image = read_dicom(get_testdata_file(name))
    assert image.pixels.ndim == 4 and image.pixels.shape[-1] == 3 and image.pixels.dtype == np.uint8
    assert image.spacing is None


def test_detected_region_of_real_captures_leaves_out_text_and_borders():
    """Boxes checked by eye on the captures (see docs/DICOM.md); asserted with some slack."""
    ybr = read_dicom(get_testdata_file("examples_ybr_color.dcm"))
    region = detect_imaging_region(ybr.pixels, 3)
    x, y, w, h = region.box
    # The cardiac sector spans about columns 75-250 and rows 15-205 of the 320x240 frame; the side
    # text columns (x < 40 and x > 290) and the bottom menu bar (y > 225) are left out.
    assert 40 <= x <= 80 and x + w <= 290 and y + h <= 225 and w * h > 0.3 * 320 * 240
    rgb = read_dicom(get_testdata_file("examples_rgb_color.dcm"))
    region = detect_imaging_region(rgb.pixels, 3)
    # The "LYMPH NODE" caption, the scale bar and the bottom text line (rows > 180) are left out.
    assert region.box[1] + region.box[3] <= 180 and region.box[3] > 120


@pytest.mark.parametrize("size", [3, 7, 11])
def test_square_opening_equals_binary_opening(size):
    """The imaging region's opening (separable filters) is the textbook one, edges included."""
    rng = np.random.default_rng(size)
    mask = ndimage.binary_dilation(rng.random((90, 130)) > 0.97, iterations=3) | (rng.random((90, 130)) > 0.8)
    mask[:, :5] = True  # a block on the frame's edge
    expected = ndimage.binary_opening(mask, structure=np.ones((size, size), dtype=bool))
    np.testing.assert_array_equal(square_opening(mask, size), expected)


def test_scan_without_a_border_is_not_cropped():
    rng = np.random.default_rng(0)
    assert detect_imaging_region(rng.integers(40, 200, size=(1, 100, 140)).astype(np.uint8)) is None
    assert detect_imaging_region(np.zeros((1, 50, 50), dtype=np.uint8)) is None  # flat: nothing to find


def test_synthetic_capture_region_is_found():
    region = detect_imaging_region(capture())
    x, y, w, h = region.box
    x0, y0, x1, y1 = SCAN
    assert abs(x - x0) <= 4 and abs(y - y0) <= 4 and abs(x + w - 1 - x1) <= 4 and abs(y + h - 1 - y1) <= 4


# --- the predictor on calibrated captures -------------------------------------------------------------


def test_network_runs_on_the_calibrated_region_and_maps_come_back_on_the_full_frame(tmp_path, dark_lesion_predictor):
    lesion = (60, 40, 40, 20)
    path = ultrasound_dicom(tmp_path / "a.dcm", capture(lesion=lesion), regions=[region_item(delta_cm=(0.02, 0.03))])
    result = dark_lesion_predictor.predict(path)
    assert result.probability.shape == (1, *capture().shape[1:])  # the full frame
    x0, y0, x1, y1 = SCAN
    outside = np.ones(result.probability.shape[1:], dtype=bool)
    outside[y0 : y1 + 1, x0 : x1 + 1] = False
    assert result.probability[0][outside].max() == 0.0  # the black border is never lesion
    (component,) = result.frames[0].components
    x, y, w, h = component.bbox
    assert abs(x - lesion[0]) <= 2 and abs(y - lesion[1]) <= 2 and abs(w - lesion[2]) <= 3 and abs(h - lesion[3]) <= 3
    assert component.area_mm2 == pytest.approx(component.area_px * 0.2 * 0.3)
    summary = result.to_json()
    assert summary["imaging_region"] == {"box": list(BOX), "method": "dicom",
                                         "cropped": {"left": 30, "top": 20, "right": 20, "bottom": 20}}
    assert result.label_image().GetSpacing() == pytest.approx((0.2, 0.3))


def test_imaging_region_none_runs_on_the_whole_frame(tmp_path, dark_lesion_predictor):
    path = ultrasound_dicom(tmp_path / "a.dcm", capture(), regions=[region_item()])
    result = dark_lesion_predictor.predict(path, imaging_region="none")
    assert result.imaging_region is None
    assert result.probability[0, :, :5].min() > 0.5  # the dark border is taken for lesion by this network
    with pytest.raises(ValueError, match="imaging_region"):
        dark_lesion_predictor.predict(path, imaging_region="everything")


def test_png_capture_gets_a_detected_region(tmp_path, dark_lesion_predictor):
    path = tmp_path / "capture.png"
    Image.fromarray(capture()[0]).save(path)
    result = dark_lesion_predictor.predict(path)
    assert result.imaging_region.method == "detected"
    assert not result.geometry.spacing_known and result.frames[0].lesion_area_mm2 is None
    assert result.probability[0, :, :20].max() == 0.0


def test_dark_deep_tissue_below_the_scan_is_not_cut_off():
    """A scan whose lower part is dark (deep tissue, shadowing: grey 10-30, weakly textured) keeps it."""
    rng = np.random.default_rng(0)
    frame = np.zeros((1, 120, 160), dtype=np.uint8)
    frame[0, 10:70, 10:150] = rng.integers(60, 200, size=(60, 140))
    frame[0, 70:120, 10:150] = rng.integers(12, 16, size=(50, 140))  # texture below the limit
    region = detect_imaging_region(frame)
    x, y, w, h = region.box
    assert y + h == 120 and abs(x - 10) <= 2 and abs(y - 10) <= 2  # black sides cut, dark bottom kept


@pytest.mark.realdata
def test_real_breast_images_without_border_are_not_cropped(shared_data):
    images = sorted((shared_data / "busbra" / "Images").glob("*.png"))[:30]
    assert images, f"{shared_data}: no BUS-BRA images"
    for image in images:
        stack = as_frame_stack(image)
        assert detect_imaging_region(stack.pixels, stack.components) is None, image


def test_undecodable_pixel_data_names_the_file_and_its_transfer_syntax(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    path = ultrasound_dicom(tmp_path / "a.dcm", capture())

    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
    dataset.PixelData = encapsulate([b"\xff\xd8 not a JPEG-LS stream \xff\xd9"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"a\.dcm: DICOM pixel data \(JPEG-LS Lossless Image Compression\) cannot be decoded"):
        read_dicom(path)


def test_calibrated_region_smaller_than_the_network_minimum_is_not_the_imaging_region(tmp_path, dark_lesion_predictor):
    """A 5x5 calibrated region is neither the network's input nor the calibration: the scan is detected."""
    path = ultrasound_dicom(tmp_path / "a.dcm", capture(), regions=[region_item(box=(40, 30, 44, 34))])
    image = read_dicom(path)
    assert image.region is None and image.spacing is None
    assert image.notes == ["ultrasound region [40, 30, 44, 34] is smaller than the 32x32 pixels MFFMT can classify: "
                           "calibration ignored"]
    result = dark_lesion_predictor.predict(path)
    assert result.imaging_region.method == "detected" and min(result.imaging_region.box[2:]) >= 32
    assert not result.geometry.spacing_known and result.frames[0].lesion_area_mm2 is None


def test_largest_calibrated_region_is_used_among_many(tmp_path):
    """100 regions: a 6x6 corner first, 98 small insets (one over 32 pixels), the scan last."""
    corner = region_item(box=(0, 0, 5, 5), delta_cm=(0.5, 0.5))
    insets = [region_item(box=(1 + i, 1, 10 + i, 10), delta_cm=(0.1, 0.1)) for i in range(97)]
    inset = region_item(box=(100, 0, 139, 33), delta_cm=(0.05, 0.05))  # usable, but smaller than the scan
    regions = [corner, *insets, inset, region_item(delta_cm=(0.02, 0.03))]
    image = read_dicom(ultrasound_dicom(tmp_path / "a.dcm", capture(), regions=regions))
    assert image.region == BOX and image.spacing == pytest.approx((0.2, 0.3))
    assert image.notes == ["ultrasound region [0, 0, 5, 5] (and 97 more) is smaller than the 32x32 pixels MFFMT "
                           "can classify: not used"]


def test_dark_hole_counts_towards_the_smallest_scan_area():
    """A textured ring round a large flat dark hole (a cyst): 3% of the frame without its hole, 6% with
    it. The hole is part of the scan (it is filled), so the ring's box is the imaging region."""
    rng = np.random.default_rng(0)
    frame = np.zeros((1, 400, 400), dtype=np.uint8)
    frame[0, 150:250, 150:250] = rng.integers(60, 200, size=(100, 100))
    frame[0, 165:235, 165:235] = 0
    x, y, w, h = detect_imaging_region(frame).box
    assert abs(x - 150) <= 2 and abs(y - 150) <= 2 and abs(w - 100) <= 4 and abs(h - 100) <= 4


def test_detected_region_smaller_than_the_network_minimum_is_not_used():
    rng = np.random.default_rng(0)
    frame = np.zeros((1, 400, 400), dtype=np.uint8)
    frame[0, 20:380, 100:125] = rng.integers(60, 200, size=(360, 25))  # a textured strip 25 pixels wide
    assert detect_imaging_region(frame) is None


def _without(item, keyword):
    del item[keyword]
    return item


def _with_pixel_spacing(path, value):
    """Rewrite ``path`` with a raw PixelSpacing value (bytes as they stand in the file)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    dataset = pydicom.dcmread(path)
    dataset._dict[Tag("PixelSpacing")] = RawDataElement(Tag("PixelSpacing"), "DS", len(value), value, 0, False, True)
    dataset.save_as(path, enforce_file_format=True)
    return path


ABSURD_REGIONS = {
    "1e10 cm": ([region_item(delta_cm=(1e10, 1e10))], "gives 1e+11 x 1e+11 mm pixels, outside the plausible"),
    "0.01 x 100 cm": ([region_item(delta_cm=(0.01, 100.0))], "gives 0.1 x 1000 mm pixels, outside the plausible"),
    "0.01 x 0.2 cm": ([region_item(delta_cm=(0.01, 0.2))], "more than 10 times longer one way than the other"),
    "inf": ([region_item(delta_cm=(float("inf"), 0.02))], "gives inf x 0.2 mm pixels"),
    "1e300": ([region_item(delta_cm=(1e300, 1e300))], "outside the plausible"),
    "1e-300": ([region_item(delta_cm=(1e-300, 1e-300))], "outside the plausible"),
    "zero": ([region_item(delta_cm=(0.0, 0.0))], "gives 0 x 0 mm pixels"),
    "no location": ([_without(region_item(), "RegionLocationMaxX1")], "region 1 has no RegionLocationMaxX1"),
}


@pytest.mark.parametrize("case", list(ABSURD_REGIONS))
def test_absurd_region_calibration_is_ignored_with_a_note(tmp_path, case):
    regions, note = ABSURD_REGIONS[case]
    image = read_dicom(ultrasound_dicom(tmp_path / "a.dcm", capture(), regions=regions))
    assert image.spacing is None and image.region is None
    (text,) = image.notes
    assert note in text and text.endswith("calibration ignored")


@pytest.mark.parametrize(("value", "note"), [
    (b"0.2 ", "PixelSpacing has 1 value(s), not 2"),
    (b"abc\\0.2 ", "PixelSpacing is not a list of numbers"),
    (b"inf\\0.1 ", "PixelSpacing gives 0.1 x inf mm pixels"),
    (b"1e10\\1e10 ", "PixelSpacing gives 1e+10 x 1e+10 mm pixels, outside the plausible 0.001-5 mm"),
])
def test_absurd_pixel_spacing_is_ignored_with_a_note(tmp_path, value, note):
    image = read_dicom(_with_pixel_spacing(ultrasound_dicom(tmp_path / "a.dcm", capture()), value))
    assert image.spacing is None
    (text,) = image.notes
    assert text.startswith(note) and text.endswith("calibration ignored")


def test_frames_with_absurd_calibrations_are_predicted_in_pixels(tmp_path, dark_lesion_predictor):
    """Every case a done row in pixels with its note (before: 6e25 mm², or an exception row)."""
    from MFFMTCore.inference.batch import predict_files
    from MFFMTCore.inference.outputs import DEFAULT_OUTPUTS

    inputs = [ultrasound_dicom(tmp_path / f"{number}.dcm", capture(), regions=regions)
              for number, (regions, _) in enumerate(ABSURD_REGIONS.values())]
    inputs.append(_with_pixel_spacing(ultrasound_dicom(tmp_path / "ps.dcm", capture()), b"0.2 "))
    summary = predict_files(dark_lesion_predictor, inputs, tmp_path / "out", outputs=(*DEFAULT_OUTPUTS, "dicom"))
    assert [outcome.status for outcome in summary.outcomes] == ["done"] * len(inputs), summary.failed
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    for entry in document["inputs"]:
        assert not entry["geometry"]["spacing_known"]
        assert len(entry["notes"]) == 1 and "calibration ignored" in entry["notes"][0]
        assert {"dicom_segmentation", "dicom_report"} <= set(entry["outputs"])
    for row in document["rows"]:
        assert row["lesion_area_px"] > 0 and row["lesion_area_mm2"] is None and row["long_axis_mm"] is None


def test_a_plausible_region_after_an_absurd_one_is_used(tmp_path):
    regions = [region_item(delta_cm=(1e10, 1e10)), region_item(delta_cm=(0.02, 0.03))]
    image = read_dicom(ultrasound_dicom(tmp_path / "a.dcm", capture(), regions=regions))
    assert image.spacing == pytest.approx((0.2, 0.3)) and image.region == BOX
    assert image.notes[0].endswith("outside the plausible 0.001-5 mm: not used")


def _pixel_data_offset(data: bytes) -> int:
    return data.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010) little endian


@pytest.mark.parametrize(("transfer_syntax", "cut", "problem"), [
    (None, lambda data: len(data) // 2, r"it ends inside PixelData \(\d+ of its 38400 bytes\)"),
    (RLELossless, lambda data: len(data) // 2, r"it ends inside an element of undefined length"),
    (JPEG2000Lossless, lambda data: len(data) - 10, r"it ends inside an element of undefined length"),
    (None, lambda data: _pixel_data_offset(data) + 5, r"it ends inside the header of an element \(5 bytes"),
    (None, _pixel_data_offset, r"its Ultrasound Multi-frame Image Storage data set ends before its Pixel Data"),
    (None, lambda data: 200, r"it ends inside the header of an element"),  # inside the file meta
])
def test_truncated_files_are_reported_as_truncated(tmp_path, transfer_syntax, cut, problem):
    whole = ultrasound_dicom(tmp_path / "whole.dcm", capture(frames=2), regions=[region_item()],
                             **({"transfer_syntax": transfer_syntax} if transfer_syntax else {}))
    data = whole.read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: cut(data)])
    with pytest.raises(ImageReadError, match=rf"cut\.dcm: DICOM file is truncated \(\d+ bytes\): {problem}"):
        as_frame_stack(path)


def test_whole_file_of_a_non_image_class_still_holds_no_image(tmp_path):
    path = ultrasound_dicom(tmp_path / "a.dcm", capture())
    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = pydicom.uid.BasicTextSRStorage
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="holds no image"):
        read_dicom(path)


def test_header_is_checked_without_decoding_and_a_cut_in_deferred_pixel_data_is_found(tmp_path):
    from pydicom.tag import Tag

    from MFFMTCore.dicom_io import read_dicom_header

    whole = ultrasound_dicom(tmp_path / "clip.dcm", capture(frames=4))  # 76800 bytes of pixels: deferred
    header = read_dicom_header(whole, defer_size=1024)
    assert (header.Rows, header.Columns, header.NumberOfFrames) == (120, 160, 4)
    assert header._dict[Tag("PixelData")].value is None  # left in the file
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:40000])
    with pytest.raises(ImageReadError, match=r"truncated \(40000 bytes\): it ends inside PixelData \(\d+ of its 76800"):
        read_dicom_header(cut, defer_size=1024)
