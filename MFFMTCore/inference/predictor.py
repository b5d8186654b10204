"""The predictor: lesion maps and benign/malignant probabilities for frames and clips.

Usage::

    from MFFMTCore.inference import Predictor

    predictor = Predictor("RUN_DIR/model.safetensors")       # or Predictor() for the default model
    result = predictor.predict("bus_0001-l.png")            # a file, SimpleITK image or NumPy array
    result.frames[0].p_malignant, result.label_image()      # label map in the input's geometry
    result.with_threshold(0.3)                              # new threshold, no new network run
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from MFFMTCore.base.lesion_decision import LesionDecision
from MFFMTCore.base.roi import RoiInput, resolve_roi
from MFFMTCore.data.transforms import expand_box, preprocess_frame
from MFFMTCore.files import ImageReadError, check_frame_size, check_frames
from MFFMTCore.inference.frames import ImageInput, as_frame_stack
from MFFMTCore.inference.gradcam import GradCamExplainer
from MFFMTCore.inference.imaging_region import ImagingRegion, find_imaging_region
from MFFMTCore.inference.input_check import (
    FeatureRecorder,
    assess_frames,
    colour_share,
    layout_scores,
    read_statistics,
)
from MFFMTCore.inference.postprocessing import resize_to_frame
from MFFMTCore.inference.result import PredictionResult, check_threshold
from MFFMTCore.model_file import load_model, resolve_model_path


class Predictor:
    """An MFFMT model loaded once, ready to predict on any number of images.

    Args:
        model_path: a model file (``RUN_DIR/model.safetensors`` of ``mffmt train``); None for the
            default model shipped with MFFMTCore.
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: frames per network call. Frames of a clip go through in chunks of this size,
            so memory on the network side does not grow with the clip's length.

    Raises:
        ModelFileError: no model given and none installed, or the file is missing, damaged
            (checksum mismatch) or built for another architecture.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model_path = resolve_model_path(model_path)
        self.device = torch.device(device)
        self.model, self.info = load_model(self.model_path, device=self.device)
        # Channels-last convolutions measured 10-25% faster on CPU at batch 8 (bench/bench_inference.py).
        self.model.to(memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.class_names = list(self.info.class_names)
        self.input_size = tuple(self.info.input_size)
        self.temperature = float(self.info.temperature)  # both checked by ModelInfo.check() at load
        self.lesion_decision = LesionDecision.from_json(self.info.lesion_decision)
        self._explainer: GradCamExplainer | None = None
        # Where breast B-mode frames lie in feature space (None: the model file has no statistics).
        self.input_statistics = read_statistics(self.model_path)

    @property
    def roi_margin(self) -> float:
        """Context margin added around an ROI: the one the model's lesion crops had in training.

        A model trained on lesion boxes grown by 20% (``mffmt train --mode lesion``) should see a
        user's box grown the same way; a model trained on whole frames gets the box as drawn.
        """
        recipe = self.info.training.get("recipe", {})  # the training configuration `mffmt train` records
        return float(recipe.get("margin", 0.0)) if recipe.get("mode") == "lesion" else 0.0

    def _network_input(self, grey: np.ndarray) -> torch.Tensor:
        batch = torch.stack([preprocess_frame(frame, self.input_size) for frame in grey])
        return batch.to(self.device).contiguous(memory_format=torch.channels_last)

    def _explain(self, x: torch.Tensor) -> torch.Tensor:
        if self._explainer is None:
            self._explainer = GradCamExplainer(self.model, class_index=len(self.class_names) - 1)
        return self._explainer(x)

    def predict(
        self,
        image: ImageInput,
        spacing: Sequence[float] | None = None,
        origin: Sequence[float] | None = None,
        direction: Sequence[float] | None = None,
        roi: RoiInput | None = None,
        gradcam: bool = False,
        threshold: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        imaging_region: str = "auto",
    ) -> PredictionResult:
        """Predict on one image: a 2D frame or a 3D stack of frames (a clip).

        Args:
            image: file path (PNG, JPEG, NRRD, NIfTI, DICOM, ...), SimpleITK image, or NumPy array
                ((H, W), (H, W, 3|4) colour, (N, H, W) stack, (N, H, W, 3|4); see
                :func:`MFFMTCore.inference.frames.as_frame_stack`).
            spacing, origin, direction: geometry for arrays, or to replace a file's (ITK order).
            roi: classify only this box of every frame (the paper's protocol): (x, y, w, h) pixels
                (x = column, y = row) or a :class:`PhysicalBox`. The box, grown by
                :attr:`roi_margin`, is cropped, run, and its lesion map pasted back into the full
                frame (zero outside).
            gradcam: also compute Grad-CAM of the malignant class (slower: one backward pass).
            threshold: lesion probability threshold; default the model's (``ModelInfo.threshold``).
            progress: called as ``progress(frames_done, frames_total)`` after each chunk; raising
                from it abandons the prediction.
            imaging_region: where the scan is when no ``roi`` is given (see
                :mod:`MFFMTCore.inference.imaging_region`): ``"auto"`` the DICOM calibrated region,
                else the detected scan rectangle; ``"dicom"`` the DICOM region only; ``"none"`` the
                whole frame. The network sees that rectangle; its maps are pasted back (zero outside).

        Returns:
            Maps in the input's exact geometry, per-frame findings and, for a 3D input, the clip's.

        Raises:
            ImageReadError: the file cannot be read; a frame or the ROI is smaller than
                :data:`MFFMTCore.files.MIN_IMAGE_SIDE` pixels; a pixel is NaN or infinite; or the network
                gave a non-finite answer. Nothing is returned for such an input: no answer is
                better than a confident wrong one.
            ValueError: the input is not a frame or a stack of frames, or the ROI misses the frame.
        """
        threshold = check_threshold(self.info.threshold if threshold is None else threshold)
        stack = as_frame_stack(image, spacing, origin, direction)
        height, width = stack.frame_shape
        check_frame_size((height, width), stack.source)
        box = resolve_roi(roi, stack.geometry, (height, width))
        if box is not None and self.roi_margin > 0:
            row0, row1, col0, col1 = expand_box(box, self.roi_margin, (height, width))
            box = (col0, row0, col1 - col0, row1 - row0)
        if box is not None:  # the region the network sees, context margin included
            check_frame_size((box[3], box[2]), stack.source, what=f"ROI {box}")
        # A user's ROI lies inside the scan already; the imaging region is only looked for without one.
        region: ImagingRegion | None = None if box is not None else find_imaging_region(stack, imaging_region)
        x0, y0, w, h = box if box is not None else region.box if region is not None else (0, 0, width, height)

        count = stack.num_frames
        # Outside an ROI there is no lesion: the maps start at zero and the box is pasted in.
        probability = np.zeros((count, height, width), dtype=np.float32)
        cam = np.zeros((count, height, width), dtype=np.float32) if gradcam else None
        class_probabilities = np.empty((count, len(self.class_names)), dtype=np.float32)
        colour, features, layout = np.empty(count), [], []
        recorder = FeatureRecorder(self.model)
        for start in range(0, count, self.batch_size):
            stop = min(start + self.batch_size, count)
            grey = stack.grey(start, stop)[:, y0 : y0 + h, x0 : x0 + w]
            check_frames(grey, stack.source, first_frame=start)
            colour[start:stop] = colour_share(stack.pixels[start:stop, y0 : y0 + h, x0 : x0 + w], stack.components)
            layout.append(layout_scores(grey))
            x = self._network_input(grey)
            with torch.inference_mode(), recorder:
                output = self.model(x)
                lesion = torch.sigmoid(resize_to_frame(output.mask_logits, (h, w)))
                probability[start:stop, y0 : y0 + h, x0 : x0 + w] = lesion.cpu().numpy()
                logits = output.class_logits.float() / self.temperature
                class_probabilities[start:stop] = torch.softmax(logits, dim=1).cpu().numpy()
            features.append(recorder.take())
            if not (np.isfinite(class_probabilities[start:stop]).all()
                    and np.isfinite(probability[start:stop]).all()):
                raise ImageReadError(stack.source, f"the network gave non-finite probabilities for frames "
                                                   f"{start}-{stop - 1}; no answer is given for this input")
            if cam is not None:
                cam[start:stop, y0 : y0 + h, x0 : x0 + w] = resize_to_frame(self._explain(x), (h, w)).cpu().numpy()
            if progress is not None:
                progress(stop, count)
        # The statistics describe whole scans (fitted without ROI): a lesion box is not compared with them.
        distance = None
        if self.input_statistics is not None and recorder.available and roi is None:
            distance = self.input_statistics.distance(np.concatenate(features))
        return PredictionResult(
            probability=probability,
            class_probabilities=class_probabilities,
            class_names=self.class_names,
            geometry=stack.geometry,
            threshold=threshold,
            source=stack.source,
            roi=box,
            gradcam=cam,
            input_frames=stack,
            lesion_decision=self.lesion_decision,
            imaging_region=region,
            input_checks=assess_frames(colour, distance, np.concatenate(layout) if roi is None else None),
        )
