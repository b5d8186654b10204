"""Is this frame a breast B-mode image? A per-frame check before a class is presented as a finding.

The network answers "benign" or "malignant" for any picture it is given: a cardiac clip, an
obstetric scan, a colour-Doppler frame. Each frame is therefore checked, and a flagged frame gets
a score, a reason, and the prediction :data:`UNSUITABLE` instead of a class, with no probabilities
and no lesion (a clip's finding is taken over its unflagged frames only).

Four checks, each scored so that 1 is its limit; a frame's score is the largest, flagged at >= 1:

- **colour**: the share of strongly coloured pixels (chroma, max - min of R, G, B, above 40 of 255)
  in the part of the frame the network sees. B-mode is grey; colour flow, power Doppler and
  elastography overlays are not. Limit: 2% of the pixels (breast captures with a few coloured
  markers or text stay below it).
- **feature distance**: how far the frame's features lie from those of the model's training
  frames. Features: the global average of the backbone's third stage (``backbone.layer3``) in the
  same forward pass as the prediction (no extra cost). Distance: cosine distance to the 20th
  nearest training frame; its limit is the 99.5% quantile of the training frames' own distances.
  The statistics (the training frames' normalised features as float16, the limit) live in the
  model file's metadata under
  :data:`METADATA_KEY`, written by :func:`MFFMTCore.commands.fit_input_check.fit_input_check`
  (``mffmt fit-input-check``). A model file without them gets the colour check only, and says so
  (``InputCheck.distance`` is None); so does a prediction in ROI mode, since the statistics
  describe whole scans, not lesion boxes.
- **upside down**: a scan is brightest near its transducer, at the top (skin, fat and gland above
  the darker chest wall; deeper echoes are attenuated). The brightness centre in depth (0 top, 1
  bottom) at or below :data:`UPSIDE_DOWN_CENTRE` passes; lower down, the frame is probably upside
  down or rotated. Only frames mostly filled with speckle are judged (a scan fills its frame). On the 1980 BUS-BRA and BUSI scans it flags 5 (0.25%) and 66% of the same
  scans turned by 180° (``experiments/harmless_changes.py --layout``).
- **dual view**: two scans side by side, as a scanner's dual-view capture shows them: a band of
  columns in the middle 40% of the frame that is black from top to bottom (at least
  :data:`DUAL_VIEW_GAP` of its pixels), with scan on both sides. The network was trained on one
  scan a frame; which of the two is meant cannot be told. It flags none of the 1980 scans and
  98.8% of pairs of them put side by side with a 12-pixel black gap.

The last two look at the frame's layout, so they are skipped in ROI mode too.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from MFFMTCore.errors import MFFMTError
from MFFMTCore.model_file import copy_with_metadata

METADATA_KEY = "input_check"
# Chroma (of 255) above which a pixel is coloured, and the share of such pixels that flags a frame.
COLOUR_CHROMA = 40.0
COLOUR_LIMIT = 0.02
# Brightness centre in depth (0 top, 1 bottom) above which a frame is taken to be upside down.
UPSIDE_DOWN_CENTRE = 0.547
# Share of black pixels in a middle column that makes it the gap of a dual-view capture.
DUAL_VIEW_GAP = 0.9
# Share of pixels differing from their right neighbour by 2 of 255 or more (speckle) from which a
# frame is judged by the upside-down check: 0.31-0.89 on 480 BUS-BRA and BUSI scans, ~0 on flat pictures.
_TEXTURED_SHARE = 0.2
# Grey level (of 255) at or below which a pixel is black, as in the imaging-region detection.
_BLACK_LEVEL = 8.0
# The layer whose globally averaged output is the feature vector.
FEATURE_LAYER = "backbone.layer3"


@dataclass(frozen=True)
class InputCheck:
    """The check of one frame.

    Args:
        score: the larger of ``colour / COLOUR_LIMIT`` and ``distance``; flagged at >= 1.
        flagged: whether the frame is unlike breast B-mode.
        reason: why it is flagged (empty when it is not).
        colour: share of strongly coloured pixels in the part of the frame the network saw.
        distance: feature distance over its limit, or None when the model file has no statistics.
    """

    score: float
    flagged: bool
    reason: str
    colour: float
    distance: float | None

    def to_json(self) -> dict:
        return {"score": self.score, "flagged": self.flagged, "reason": self.reason, "colour": self.colour,
                "distance": self.distance}


@dataclass
class FeatureStatistics:
    """Where breast B-mode frames lie in the network's feature space: the training frames' features.

    The distance of a frame is the cosine distance of its (L2-normalised) feature vector to its
    ``neighbours``-th nearest training frame (deep nearest-neighbour out-of-distribution detection,
    Sun et al., ICML 2022). It needs no assumption about the shape of the distribution, which in
    this network's feature space is far from Gaussian (a Mahalanobis distance left cardiac frames
    within the limit; see docs/DICOM.md).

    Args:
        reference: (n, D) L2-normalised features of the training frames.
        neighbours: which nearest neighbour's distance is the frame's distance.
        limit: the distance at which a frame is flagged.
        fitted: how the statistics were made (frames, quantile, model checksum, date).
    """

    reference: np.ndarray
    neighbours: int
    limit: float
    fitted: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, features: np.ndarray, neighbours: int = 20, quantile: float = 0.995,
            fitted: dict[str, Any] | None = None) -> FeatureStatistics:
        """Fit on (n, D) features of breast B-mode frames; the limit is the ``quantile`` of their own
        distances (each frame left out of its own neighbours)."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or len(features) <= 2 * neighbours:
            raise MFFMTError("--neighbours", f"{neighbours} needs more than {2 * neighbours} training frames to fit, got "
                             f"{features.shape}; give more training images or fewer neighbours")
        statistics = cls(_normalised(features).astype(np.float16).astype(np.float32), neighbours, 1.0,
                         dict(fitted or {}))
        own = statistics.raw_distance(features, skip_self=True)
        # A floor keeps scores finite when the training frames are (near-)duplicates of each other.
        statistics.limit = max(float(np.quantile(own, quantile)), 1e-6)
        statistics.fitted.update({"frames": len(features), "quantile": quantile, "neighbours": neighbours})
        return statistics

    def raw_distance(self, features: np.ndarray, skip_self: bool = False) -> np.ndarray:
        """(n,) cosine distance of each feature vector to its ``neighbours``-th nearest reference.

        Args:
            skip_self: the features are the reference itself: each one's nearest (itself) is skipped.
        """
        rank = self.neighbours if skip_self else self.neighbours - 1
        query = _normalised(np.asarray(features, dtype=np.float32))
        distances = []
        for start in range(0, len(query), 256):  # bounded memory for long clips
            cosine = 1.0 - query[start : start + 256] @ self.reference.T
            distances.append(np.partition(cosine, rank, axis=1)[:, rank])
        return np.concatenate(distances) if distances else np.zeros(0)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(n,) distances over the limit: >= 1 is unlike the training frames."""
        return self.raw_distance(features) / self.limit

    def to_json(self) -> str:
        data = base64.b64encode(self.reference.astype("<f2").tobytes()).decode("ascii")
        return json.dumps({
            "layer": FEATURE_LAYER, "method": "knn-cosine", "neighbours": self.neighbours, "limit": self.limit,
            "reference": {"dtype": "float16", "shape": list(self.reference.shape), "data": data},
            "fitted": self.fitted,
        }, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> FeatureStatistics:
        values = json.loads(text)
        if values.get("layer") != FEATURE_LAYER or values.get("method") != "knn-cosine":
            raise ValueError(f"input-check statistics of layer {values.get('layer')!r} and method "
                             f"{values.get('method')!r}; this version reads {FEATURE_LAYER!r}, 'knn-cosine'")
        stored = values["reference"]
        reference = np.frombuffer(base64.b64decode(stored["data"]), dtype="<f2").reshape(stored["shape"])
        return cls(reference.astype(np.float32), int(values["neighbours"]), float(values["limit"]),
                   dict(values.get("fitted", {})))


def _normalised(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def read_statistics(model_path: str | os.PathLike) -> FeatureStatistics | None:
    """The input-check statistics stored in a model file, or None when it has none.

    Raises:
        MFFMTError: the stored statistics are damaged (names the file).
    """
    with safe_open(str(model_path), framework="pt") as handle:
        text = (handle.metadata() or {}).get(METADATA_KEY)
    if text is None:
        return None
    try:
        return FeatureStatistics.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise MFFMTError(model_path, f"input-check statistics cannot be read ({error})") from error


def write_statistics(model_path: str | os.PathLike, output: str | os.PathLike, statistics: FeatureStatistics) -> Path:
    """Write a copy of ``model_path`` whose metadata holds ``statistics`` (weights unchanged; the checksum,
    which covers the whole header, is taken anew over the verified source).

    Raises:
        ModelFileError: ``output`` is the model file itself (a model file is never overwritten in place),
            or the source is not a valid model file.
    """
    return copy_with_metadata(model_path, output, {METADATA_KEY: statistics.to_json()})


def colour_share(pixels: np.ndarray, components: int) -> np.ndarray:
    """(n,) share of strongly coloured pixels in each of (n, H, W[, C]) frames (0 for grey frames)."""
    if components < 3:
        return np.zeros(len(pixels))
    rgb = np.asarray(pixels[..., :3], dtype=np.float32)
    top = float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else max(float(rgb.max()), 1.0)
    chroma = (rgb.max(axis=-1) - rgb.min(axis=-1)) * (255.0 / top)
    return (chroma > COLOUR_CHROMA).mean(axis=(1, 2))


def _share(mask: np.ndarray) -> float:
    """The share of True in a boolean array (nan when empty): ``mask.mean()`` to the bit, 10x faster."""
    return np.count_nonzero(mask) / mask.size if mask.size else float("nan")


def layout_scores(grey: np.ndarray) -> np.ndarray:
    """(n, 2) scores of the upside-down and dual-view checks of (n, H, W) grey frames (1 = limit).

    Args:
        grey: the part of each frame the network sees, grey values of any range.
    """
    frames = np.asarray(grey, dtype=np.float32).reshape(-1, *grey.shape[-2:])
    height, width = frames.shape[1:]
    depth = (np.arange(height) + 0.5) / height
    scores = np.zeros((len(frames), 2))
    for index, frame in enumerate(frames):
        top = max(float(frame.max()), 1.0)
        black = frame <= _BLACK_LEVEL * top / 255.0
        # A scan fills most of its frame with speckle; shapes on a flat background are not judged.
        textured = _share(np.abs(np.diff(frame, axis=1)) >= 2.0 * top / 255.0) if width > 1 else 0.0
        if _share(black) < 0.5 and textured >= _TEXTURED_SHARE:
            rows = frame.mean(axis=1, dtype=np.float64) - min(float(frame.min()), 0.0)
            centre = float(rows @ depth / rows.sum()) if rows.sum() > 0 else 0.5
            scores[index, 0] = (centre - 0.5) / (UPSIDE_DOWN_CENTRE - 0.5)
        share = black.mean(axis=0)
        first, last = int(width * 0.3), int(width * 0.7)
        if last <= first:
            continue
        gap = first + int(np.argmax(share[first:last]))
        # Scan on both sides: most of each side is not black.
        sides = _share(black[:, :gap]) < 0.5 and _share(black[:, gap + 1 :]) < 0.5
        scores[index, 1] = float(share[gap]) / DUAL_VIEW_GAP if sides else 0.0
    return scores


def assess_frames(colour: np.ndarray, distance: np.ndarray | None, layout: np.ndarray | None = None) -> list[InputCheck]:
    """Combine per-frame colour shares, feature distances (over their limit) and layout scores
    (:func:`layout_scores`, None to skip them) into checks."""
    checks = []
    reasons = {
        "upside down": "brighter at the bottom than a scan with its transducer at the top: upside down or "
                       "rotated? turn it skin side up",
        "dual view": "two scans side by side (a dual-view capture): give one view, or an ROI",
    }
    for index, share in enumerate(colour):
        scores = {"colour": float(share) / COLOUR_LIMIT}
        if distance is not None:
            scores["features"] = float(distance[index])
        if layout is not None:
            scores["upside down"], scores["dual view"] = (float(value) for value in layout[index])
        worst = max(scores, key=scores.get)
        score = scores[worst]
        flagged = score >= 1.0
        reason = ""
        if flagged and worst == "colour":
            reason = (f"colour in {100 * share:.1f}% of the scan (colour Doppler or a colour overlay; "
                      f"B-mode is grey)")
        elif flagged and worst in reasons:
            reason = reasons[worst]
        elif flagged:
            reason = (f"unlike the breast B-mode images the model was trained on (feature distance "
                      f"{score:.2f} x its limit): another organ, view or kind of image")
        checks.append(InputCheck(score=score, flagged=flagged, reason=reason, colour=float(share),
                                 distance=None if distance is None else float(distance[index])))
    return checks


class FeatureRecorder:
    """Keeps the globally averaged output of the network's feature layer during forward passes.

    Usage: ``with FeatureRecorder(model) as recorder: model(x)``; then ``recorder.take()`` gives
    (B, D) features of the calls since the last take. A network without the layer records nothing.
    """

    def __init__(self, model: torch.nn.Module):
        # get_submodule walks the name's path only: listing named_modules() cost ~1-4 ms per network call.
        try:
            self.layer: torch.nn.Module | None = model.get_submodule(FEATURE_LAYER)
        except AttributeError:
            self.layer = None
        self._features: list[torch.Tensor] = []
        self._handle = None

    @property
    def available(self) -> bool:
        return self.layer is not None

    def __enter__(self) -> FeatureRecorder:
        if self.layer is not None:
            # Only this thread's forward passes: live mode runs one network in several threads.
            thread = threading.get_ident()
            self._handle = self.layer.register_forward_hook(
                lambda _module, _inputs, output: self._features.append(output.float().mean(dim=(2, 3)).cpu())
                if threading.get_ident() == thread else None
            )
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def take(self) -> np.ndarray | None:
        """Features recorded since the last call, (B, D), or None when the network has no such layer."""
        if not self._features:
            return None
        features = torch.cat(self._features).numpy()
        self._features.clear()
        return features
