"""What one prediction returns: lesion maps in the input's geometry, per-frame and clip-level findings.

The network's outputs (lesion probability per pixel, class probabilities per frame) are stored once;
everything that depends on the threshold (label map, lesion components, the clip-level aggregate) is
derived from them, so :meth:`PredictionResult.with_threshold` never runs the network again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class PredictionResult:
    """The prediction for one input (a 2D frame or a 3D stack of frames).

    Args:
        probability: (N, H, W) float32 lesion probability on the input's pixel grid.
        class_probabilities: (N, C) float32 class probabilities per frame.
        class_names: names of the C classes (from the model file).
        geometry: the input's geometry: 2D input -> 2D outputs, 3D -> 3D.
        threshold: lesion probability at or above which a pixel is lesion.
        source: the input's file name or a description of it.
        roi: (x, y, w, h) pixel box that was classified (ROI mode), or None for whole frames.
        gradcam: (N, H, W) float32 Grad-CAM of the positive class in [0, 1], or None.
        input_frames: the input's frames (a view, not a copy), for pictures such as the overlay.
        lesion_decision: the frame-level lesion rule; the default counts any lesion pixel. Frames it
            finds lesion-free get an empty label map.
        imaging_region: the scan rectangle the network saw when no ROI was given (DICOM calibrated
            region or detected), or None for the whole frame.
        input_checks: per frame, whether it looks like breast B-mode; flagged frames get the
            prediction ``UNSUITABLE`` and a clip's finding is taken over the other frames.
    """

    probability: np.ndarray
    class_probabilities: np.ndarray
    class_names: list[str]
    geometry: ImageGeometry
    threshold: float
    source: str = ""
    roi: tuple[int, int, int, int] | None = None
    gradcam: np.ndarray | None = None
    input_frames: FrameStack | None = field(default=None, repr=False)
    lesion_decision: LesionDecision = field(default_factory=LesionDecision)
    imaging_region: ImagingRegion | None = None
    input_checks: list[InputCheck] | None = None
    label: np.ndarray = field(init=False, repr=False)
    frames: list[FrameResult] = field(init=False, repr=False)
    clip: ClipResult | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.threshold = check_threshold(self.threshold)
        self.label = (self.probability >= self.threshold).astype(np.uint8)
        frames, masses, sums = [], np.zeros(len(self.probability)), np.zeros(len(self.probability))
        analysed_px = self.analysed_px
        checks = self.input_checks or [None] * len(self.probability)
        for index, (label, probability, classes, check) in enumerate(
            zip(self.label, self.probability, self.class_probabilities, checks)
        ):
            lesion = label.astype(bool)
            components = find_components(lesion, probability, self.geometry, index)
            peak = float(probability.max()) if probability.size else 0.0
            largest = components[0].area_px / analysed_px if components else 0.0
            # A frame unlike breast B-mode carries no answer: no lesion, no class probabilities.
            flagged = check is not None and check.flagged
            present = self.lesion_decision.present(peak, largest) and not flagged
            if not present:
                label[...] = 0  # a lesion-free frame shows no lesion (its own row of self.label)
                lesion, components = label.astype(bool), []
            masses[index] = float(probability[lesion].sum(dtype=np.float64))
            sums[index] = float(probability.sum(dtype=np.float64))
            frames.append(
                FrameResult(
                    frame=index,
                    probabilities={name: None if flagged else float(p) for name, p in zip(self.class_names, classes)},
                    prediction=UNSUITABLE if flagged else self.class_names[int(np.argmax(classes))],
                    components=components,
                    lesion_mass=float(masses[index]),
                    spacing_known=self.geometry.spacing_known,
                    p_lesion=peak,
                    lesion_present=present,
                    input_check=check,
                )
            )
        self.frames = frames
        self.clip = None if self.is_2d else self._clip(masses, sums)

    def _clip(self, masses: np.ndarray, sums: np.ndarray) -> ClipResult:
        """The clip's finding over the frames the input check did not flag (all frames when none is checked)."""
        flagged = [frame.input_check is not None and frame.input_check.flagged for frame in self.frames]
        return clip_finding(self.class_probabilities, masses, self.class_names, sums, flagged)

    @property
    def analysed_px(self) -> int:
        """Pixels the network saw: the ROI, the imaging region or the frame (the lesion rule's area is
        relative to it)."""
        box = self.roi or (self.imaging_region.box if self.imaging_region is not None else None)
        return box[2] * box[3] if box is not None else int(self.probability[0].size)

    @property
    def is_2d(self) -> bool:
        return self.geometry.dimension == 2

    @property
    def key_frame(self) -> int:
        """The frame to show: the clip's key frame, or 0 for a single frame."""
        return self.clip.key_frame if self.clip is not None else 0

    def with_threshold(self, threshold: float) -> PredictionResult:
        """The same prediction at another threshold, without running the network again."""
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
        if self.gradcam is None:
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
            "size": list(self.probability.shape[::-1][: self.geometry.dimension]),
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
