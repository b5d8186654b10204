"""The clip-level finding: one class for a clip from its frames' class probabilities and lesion masses.

Used for a clip in one go (:class:`MFFMTCore.inference.result.PredictionResult`) and for a clip that
grows frame by frame (the Slicer module's live mode, which keeps a running finding while scanning):
both call :func:`clip_finding`, so the rule exists once. NumPy only (no torch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from MFFMTCore.base.labels import UNSUITABLE


@dataclass(frozen=True)
class ClipResult:
    """One finding for a whole clip (a 3D input of N frames).

    Args:
        probabilities: class name -> aggregated probability (see :func:`aggregate_frames`).
        prediction: the most probable class after aggregation.
        aggregation: ``"lesion-weighted mean"`` or ``"mean"`` (no frame shows a lesion).
        key_frame: the frame with the largest lesion probability mass (the one to look at).
        frames_with_lesion: number of frames whose label map is not empty.
        num_frames: number of frames.
        frames_assessed: frames the finding is taken over (those the input check did not flag);
            ``prediction`` is ``UNSUITABLE`` when every frame is flagged.
    """

    probabilities: dict[str, float | None]
    prediction: str
    aggregation: str
    key_frame: int
    frames_with_lesion: int
    num_frames: int
    frames_assessed: int | None = None

    @property
    def p_malignant(self) -> float | None:
        return list(self.probabilities.values())[-1]

    def to_json(self) -> dict:
        return {
            "probabilities": self.probabilities,
            "p_malignant": self.p_malignant,
            "prediction": self.prediction,
            "aggregation": self.aggregation,
            "key_frame": self.key_frame,
            "frames_with_lesion": self.frames_with_lesion,
            "num_frames": self.num_frames,
            "frames_assessed": self.num_frames if self.frames_assessed is None else self.frames_assessed,
        }


def aggregate_frames(
    class_probabilities: np.ndarray, lesion_mass: np.ndarray, class_names: list[str], frame_sums: np.ndarray
) -> ClipResult:
    """Combine per-frame class probabilities into one clip-level result.

    Each frame's class probabilities are weighted by its lesion probability mass (the sum of the
    lesion probability over its label map). Why: in a sweep many frames miss the lesion or catch
    only its edge, and the classifier learned benign vs malignant from frames that show a lesion
    (frames without one carry no class label in training), so its output on lesion-free frames is
    not evidence about the lesion. Frames showing more of the lesion, more surely, count more.
    When no frame shows a lesion, the plain mean is used: there is nothing better to weight by.

    Args:
        class_probabilities: (N, C) per-frame class probabilities.
        lesion_mass: (N,) lesion probability mass per frame.
        class_names: the C class names.
        frame_sums: (N,) sum of the lesion probability over each whole frame; picks the key frame
            when no frame has a lesion.
    """
    total = float(lesion_mass.sum())
    if total > 0:
        weights, aggregation = lesion_mass / total, "lesion-weighted mean"
        key_frame = int(np.argmax(lesion_mass))
    else:
        weights, aggregation = np.full(len(lesion_mass), 1.0 / len(lesion_mass)), "mean"
        key_frame = int(np.argmax(frame_sums))
    probabilities = weights @ class_probabilities.astype(np.float64)
    return ClipResult(
        probabilities={name: float(p) for name, p in zip(class_names, probabilities)},
        prediction=class_names[int(np.argmax(probabilities))],
        aggregation=aggregation,
        key_frame=key_frame,
        frames_with_lesion=int(np.count_nonzero(lesion_mass)),
        num_frames=len(lesion_mass),
    )


def clip_finding(
    class_probabilities: np.ndarray,
    lesion_mass: np.ndarray,
    class_names: list[str],
    frame_sums: np.ndarray,
    flagged: Sequence[bool],
) -> ClipResult:
    """The clip's finding over the frames the input check did not flag (see :func:`aggregate_frames`).

    Args:
        class_probabilities, lesion_mass, class_names, frame_sums: as for :func:`aggregate_frames`.
        flagged: (N,) whether each frame was flagged as unlike breast B-mode; when every frame is,
            the prediction is ``UNSUITABLE``, the probabilities None and ``frames_assessed`` 0.
    """
    kept = ~np.asarray(flagged, dtype=bool)
    if not kept.any():
        clip = aggregate_frames(class_probabilities, lesion_mass, class_names, frame_sums)
        # No frame to answer from: no class probabilities either (as for each flagged frame).
        return dataclasses.replace(clip, prediction=UNSUITABLE, frames_assessed=0,
                                   probabilities=dict.fromkeys(class_names))
    indices = np.flatnonzero(kept)
    clip = aggregate_frames(class_probabilities[indices], lesion_mass[indices], class_names, frame_sums[indices])
    return dataclasses.replace(clip, key_frame=int(indices[clip.key_frame]), num_frames=len(kept),
                               frames_assessed=len(indices))
