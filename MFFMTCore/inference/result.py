"""What one prediction returns: lesion maps in the input's geometry, per-frame and clip-level findings.

The network's outputs (lesion probability per pixel, class probabilities per frame) are stored once;
everything that depends on the threshold (label map, lesion components, the clip-level aggregate) is
derived from them (:class:`FrameAnalysis`, frame by frame), so :meth:`PredictionResult.with_threshold`
never runs the network again. A clip's maps may live in files it streamed them to rather than in
memory (:mod:`MFFMTCore.inference.nrrd_stream`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from MFFMTCore.base.clip_finding import ClipResult, clip_finding
from MFFMTCore.base.components import LesionComponent, LesionSummary, find_components
from MFFMTCore.base.geometry import ImageGeometry
from MFFMTCore.base.labels import UNSUITABLE
from MFFMTCore.base.lesion_decision import LesionDecision
from MFFMTCore.base.measurements import LesionMeasurements
from MFFMTCore.base.thresholds import check_threshold
from MFFMTCore.inference.frames import FrameStack
from MFFMTCore.inference.imaging_region import ImagingRegion
from MFFMTCore.inference.input_check import InputCheck
from MFFMTCore.inference.label_frames import LabelFrames
from MFFMTCore.inference.nrrd_stream import NrrdStream


@dataclass(frozen=True)
class FrameResult:
    """Findings on one frame.

    Args:
        frame: index of the frame in the input, from 0 (its k index for a 3D input).
        probabilities: class name -> probability (softmax of the class logits); None for a frame the
            input check flagged (it carries no answer: no probabilities, no lesion).
        prediction: the most probable class.
        components: lesion regions of the label map, largest first.
        lesion_mass: sum of the lesion probability over the label map's pixels: how much lesion
            the network sees in this frame, used to weight frames in a clip.
        spacing_known: whether areas in mm² can be given.
        p_lesion: the highest lesion probability of the frame's map.
        lesion_present: the model's frame-level lesion decision (see
            :class:`MFFMTCore.base.lesion_decision.LesionDecision`); without a lesion the frame has no
            components and an empty label map.
        input_check: whether the frame looks like breast B-mode (see
            :mod:`MFFMTCore.inference.input_check`); a flagged frame's prediction is ``UNSUITABLE``.
    """

    frame: int
    probabilities: dict[str, float | None]
    prediction: str
    components: list[LesionComponent]
    lesion_mass: float
    spacing_known: bool
    p_lesion: float = 0.0
    lesion_present: bool = False
    input_check: InputCheck | None = None

    @property
    def p_malignant(self) -> float | None:
        """Probability of the positive class (the last class name; malignant for MFFMT models); None
        for a flagged frame."""
        return list(self.probabilities.values())[-1]

    @property
    def lesion(self) -> LesionSummary:
        """Total lesion area, number of regions and centre of the largest (see :class:`LesionSummary`)."""
        return LesionSummary.of(self.components, self.spacing_known)

    @property
    def lesion_area_px(self) -> int:
        return self.lesion.area_px

    @property
    def lesion_area_mm2(self) -> float | None:
        """Total lesion area in mm², None when the input's spacing is unknown."""
        return self.lesion.area_mm2

    @property
    def measurements(self) -> LesionMeasurements | None:
        """Diameters and orientation of the largest lesion region (None without lesion)."""
        return self.components[0].measurements if self.components else None

    @property
    def centroid(self) -> tuple[float, float, float] | None:
        """Physical centre of the largest lesion region (None without lesion)."""
        return self.lesion.centroid

    def to_json(self) -> dict:
        return {
            "frame": self.frame,
            "probabilities": self.probabilities,
            "prediction": self.prediction,
            "lesion_present": self.lesion_present,
            "p_lesion": self.p_lesion,
            "lesion_mass": self.lesion_mass,
            "lesion_area_px": self.lesion_area_px,
            "lesion_area_mm2": self.lesion_area_mm2,
            "components": [component.to_json() for component in self.components],
            "input_check": self.input_check.to_json() if self.input_check is not None else None,
        }


def analysed_box(roi: tuple[int, int, int, int] | None, region: ImagingRegion | None,
                 frame_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the part of each frame the network sees: the ROI, else the imaging region,
    else the whole frame."""
    height, width = frame_shape
    return roi or (region.box if region is not None else (0, 0, width, height))


@dataclass(frozen=True)
class _FrameAnalysis:
    """What the lesion map of one frame gives at a threshold, before the lesion decision."""

    components: list[LesionComponent]
    peak: float  # the highest lesion probability
    largest: float  # the largest region's share of the analysed pixels
    mass: float  # lesion probability summed over the label map's pixels
    total: float  # lesion probability summed over the frame


class FrameAnalysis:
    """The threshold-dependent findings of a lesion probability map, taken frame by frame.

    Frames can be added in chunks as they leave the network (a streamed clip), or all at once;
    :meth:`results` then applies the lesion decision and the input check. Both ways give the same
    answer, frame for frame.

    Args:
        count: frames of the input.
        frame_shape: (H, W).
        geometry: the input's geometry.
        threshold: lesion probability at or above which a pixel is lesion.
        analysed_px: pixels the network saw per frame (see :func:`analysed_box`).
        measurements: measure each lesion's axes and orientation (False: its ``measurements`` are None).
    """

    def __init__(self, count: int, frame_shape: tuple[int, int], geometry: ImageGeometry, threshold: float,
                 analysed_px: int, measurements: bool = True):
        self.geometry, self.threshold, self.analysed_px = geometry, check_threshold(threshold), analysed_px
        self.measurements = measurements
        self.labels = LabelFrames(count, frame_shape)
        self._frames: list[_FrameAnalysis | None] = [None] * count

    def add(self, start: int, probability: np.ndarray) -> None:
        """Analyse frames ``start``, ``start + 1``, ... of their (n, H, W) lesion probability."""
        for index, frame in enumerate(probability, start=start):
            lesion = frame >= self.threshold
            components = find_components(lesion, frame, self.geometry, index, self.measurements)
            self.labels.set(index, lesion)
            self._frames[index] = _FrameAnalysis(
                components=components,
                peak=float(frame.max()) if frame.size else 0.0,
                largest=components[0].area_px / self.analysed_px if components else 0.0,
                mass=float(frame[lesion].sum(dtype=np.float64)),
                total=float(frame.sum(dtype=np.float64)),
            )

    def results(self, class_probabilities: np.ndarray, class_names: list[str], checks: list[InputCheck] | None,
                lesion_decision: LesionDecision) -> tuple[list[FrameResult], np.ndarray, np.ndarray]:
        """Per frame its :class:`FrameResult`, with its lesion mass and probability sum (for a clip).

        A frame without a lesion by ``lesion_decision``, or flagged by its input check, has no
        components and an empty label map (its frame of :attr:`labels` is cleared).
        """
        if any(frame is None for frame in self._frames):
            raise ValueError(f"{self._frames.count(None)} of {len(self._frames)} frames were not analysed")
        frames, masses, sums = [], np.zeros(len(self._frames)), np.zeros(len(self._frames))
        checks = checks or [None] * len(self._frames)
        for index, (found, classes, check) in enumerate(zip(self._frames, class_probabilities, checks)):
            # A frame unlike breast B-mode carries no answer: no lesion, no class probabilities.
            flagged = check is not None and check.flagged
            present = lesion_decision.present(found.peak, found.largest) and not flagged
            if not present:
                self.labels.clear(index)  # a lesion-free frame shows no lesion
            masses[index] = found.mass if present else 0.0
            sums[index] = found.total
            frames.append(
                FrameResult(
                    frame=index,
                    probabilities={name: None if flagged else float(p) for name, p in zip(class_names, classes)},
                    prediction=UNSUITABLE if flagged else class_names[int(np.argmax(classes))],
                    components=found.components if present else [],
                    lesion_mass=float(masses[index]),
                    spacing_known=self.geometry.spacing_known,
                    p_lesion=found.peak,
                    lesion_present=present,
                    input_check=check,
                )
            )
        return frames, masses, sums


#: A map as a result holds it: in memory, or in the NRRD file a clip streamed it to.
StoredMap = np.ndarray | NrrdStream


class PredictionResult:
    """The prediction for one input (a 2D frame or a 3D stack of frames).

    Made by :meth:`MFFMTCore.inference.Predictor.predict`. Its maps are usually held in memory; a clip
    predicted with ``maps_to`` (as ``mffmt predict`` does) streamed its probability (and Grad-CAM)
    map to files instead, and :attr:`probability` and :attr:`gradcam` read them back when asked (the
    whole map in memory then). The label map is kept compressed per frame (:attr:`labels`):
    :attr:`label` gives the whole array, :meth:`label_frame` one frame.

    Args:
        probability: (N, H, W) float32 lesion probability on the input's pixel grid; a streamed
            clip's :class:`NrrdStream`, or None when it was not kept.
        class_probabilities: (N, C) float32 class probabilities per frame.
        class_names: names of the C classes (from the model file).
        geometry: the input's geometry: 2D input -> 2D outputs, 3D -> 3D.
        threshold: lesion probability at or above which a pixel is lesion.
        source: the input's file name or a description of it.
        roi: (x, y, w, h) pixel box that was classified (ROI mode), or None for whole frames.
        gradcam: (N, H, W) float32 Grad-CAM of the positive class in [0, 1] (or its stream), or None.
        input_frames: the input's frames (a view, not a copy), for pictures such as the overlay.
        lesion_decision: the frame-level lesion rule; the default counts any lesion pixel. Frames it
            finds lesion-free get an empty label map.
        imaging_region: the scan rectangle the network saw when no ROI was given (DICOM calibrated
            region or detected), or None for the whole frame.
        input_checks: per frame, whether it looks like breast B-mode; flagged frames get the
            prediction ``UNSUITABLE`` and a clip's finding is taken over the other frames.
        analysis: the frames' findings at ``threshold``, taken as a streamed clip's frames left the
            network; None: taken here from ``probability``.
        measurements: whether lesions are measured (axes, orientation) when the findings are taken
            here; False: their ``measurements`` are None.
    """

    def __init__(
        self,
        probability: StoredMap | None,
        class_probabilities: np.ndarray,
        class_names: list[str],
        geometry: ImageGeometry,
        threshold: float,
        source: str = "",
        roi: tuple[int, int, int, int] | None = None,
        gradcam: StoredMap | None = None,
        input_frames: FrameStack | None = None,
        lesion_decision: LesionDecision | None = None,
        imaging_region: ImagingRegion | None = None,
        input_checks: list[InputCheck] | None = None,
        analysis: FrameAnalysis | None = None,
        measurements: bool = True,
    ):
        self.class_probabilities = class_probabilities
        self.class_names = class_names
        self.geometry = geometry
        self.threshold = check_threshold(threshold)
        self.source = source
        self.roi = roi
        self.input_frames = input_frames
        self.lesion_decision = lesion_decision if lesion_decision is not None else LesionDecision()
        self.imaging_region = imaging_region
        self.input_checks = input_checks
        self._maps: dict[str, StoredMap | None] = {"probability": probability, "gradcam": gradcam}
        if analysis is None:
            if not isinstance(probability, np.ndarray):
                raise ValueError("a result without its frames' analysis needs its probability map")
            analysis = FrameAnalysis(len(probability), probability.shape[1:3], geometry, self.threshold,
                                     self._analysed_px(probability.shape[1:3]), measurements)
            analysis.add(0, probability)
        elif analysis.threshold != self.threshold:
            raise ValueError(f"frames analysed at threshold {analysis.threshold}, not {self.threshold}")
        self.measurements = analysis.measurements
        self.labels = analysis.labels
        self._label: np.ndarray | None = None
        self.frames, masses, sums = analysis.results(class_probabilities, class_names, input_checks,
                                                     self.lesion_decision)
        self.clip: ClipResult | None = None if self.is_2d else self._clip(masses, sums)

    def _clip(self, masses: np.ndarray, sums: np.ndarray) -> ClipResult:
        """The clip's finding over the frames the input check did not flag (all frames when none is checked)."""
        flagged = [frame.input_check is not None and frame.input_check.flagged for frame in self.frames]
        return clip_finding(self.class_probabilities, masses, self.class_names, sums, flagged)

    def _analysed_px(self, frame_shape: tuple[int, int]) -> int:
        box = analysed_box(self.roi, self.imaging_region, frame_shape)
        return box[2] * box[3]

    @property
    def analysed_px(self) -> int:
        """Pixels the network saw: the ROI, the imaging region or the frame (the lesion rule's area is
        relative to it)."""
        return self._analysed_px(self.labels.frame_shape)

    @property
    def is_2d(self) -> bool:
        return self.geometry.dimension == 2

    @property
    def key_frame(self) -> int:
        """The frame to show: the clip's key frame, or 0 for a single frame."""
        return self.clip.key_frame if self.clip is not None else 0

    def _map(self, name: str) -> np.ndarray:
        stored = self._maps[name]
        if stored is None:
            raise ValueError(f"{self.source}: this prediction's {name} map was not kept (a clip streams to "
                             "disk only the maps named in maps_to)")
        return stored if isinstance(stored, np.ndarray) else stored.read()

    def stored_map(self, name: str) -> StoredMap | None:
        """The ``"probability"`` or ``"gradcam"`` map as this result holds it (array, stream or None)."""
        return self._maps[name]

    @property
    def probability(self) -> np.ndarray:
        """(N, H, W) float32 lesion probability; a streamed clip's is read from its file at each use.

        Raises:
            ValueError: a streamed clip's map that was not kept.
        """
        return self._map("probability")

    @property
    def has_gradcam(self) -> bool:
        """Whether this prediction holds a Grad-CAM map (in memory or streamed)."""
        return self._maps["gradcam"] is not None

    @property
    def gradcam(self) -> np.ndarray | None:
        """(N, H, W) float32 Grad-CAM of the positive class in [0, 1], or None when not computed; a
        streamed clip's is read from its file at each use."""
        return self._map("gradcam") if self.has_gradcam else None

    @property
    def label(self) -> np.ndarray:
        """(N, H, W) uint8 label map (1 = lesion), made from :attr:`labels` at the first use and kept."""
        if self._label is None:
            self._label = self.labels.array()
        return self._label

    def label_frame(self, frame: int) -> np.ndarray:
        """(H, W) uint8 label map of one frame (without making the whole :attr:`label`)."""
        return self._label[frame] if self._label is not None else self.labels.frame(frame)

    def with_threshold(self, threshold: float) -> PredictionResult:
        """The same prediction at another threshold, without running the network again (a streamed
        clip's probability map is read back, and the new result holds it in memory)."""
        return PredictionResult(
            probability=self.probability,
            class_probabilities=self.class_probabilities,
            class_names=self.class_names,
            geometry=self.geometry,
            threshold=threshold,
            source=self.source,
            roi=self.roi,
            gradcam=self.gradcam,
            input_frames=self.input_frames,
            lesion_decision=self.lesion_decision,
            imaging_region=self.imaging_region,
            input_checks=self.input_checks,
            measurements=self.measurements,
        )

    def _image(self, array: np.ndarray) -> sitk.Image:
        return self.geometry.image_from_array(array[0] if self.is_2d else array)

    def probability_image(self) -> sitk.Image:
        """Lesion probability (float32) with the input's size, spacing, origin and direction."""
        return self._image(self.probability)

    def label_image(self) -> sitk.Image:
        """Label map (uint8, 1 = lesion) with the input's size, spacing, origin and direction."""
        return self._image(self.label)

    def gradcam_image(self) -> sitk.Image:
        """Grad-CAM (float32, [0, 1]) in the input's geometry.

        Raises:
            ValueError: Grad-CAM was not requested for this prediction.
        """
        if not self.has_gradcam:
            raise ValueError("this prediction has no Grad-CAM; call predict(..., gradcam=True)")
        return self._image(self.gradcam)

    def to_json(self) -> dict:
        """Everything but the pixel maps, as JSON-ready values."""
        return {
            "source": self.source,
            "threshold": self.threshold,
            "lesion_decision": self.lesion_decision.to_json(),
            "roi": list(self.roi) if self.roi is not None else None,
            "geometry": self.geometry.to_json(),
            "size": list(self.labels.shape[::-1][: self.geometry.dimension]),
            "frames": [frame.to_json() for frame in self.frames],
            "clip": self.clip.to_json() if self.clip is not None else None,
            **self._input_json(),
        }

    def _input_json(self) -> dict:
        """Where the network looked and what the input's calibration said (issue 13's additions)."""
        dicom = self.input_frames.dicom if self.input_frames is not None else None
        return {
            "imaging_region": self.imaging_region.to_json() if self.imaging_region is not None else None,
            "notes": list(dicom.notes) if dicom is not None else [],
        }
