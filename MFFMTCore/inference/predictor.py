"""The predictor: lesion maps and benign/malignant probabilities for frames and clips.

Usage::

    from MFFMTCore.inference import Predictor
    from MFFMTCore.inference.outputs import output_paths, write_outputs

    predictor = Predictor("RUN_DIR/model.safetensors")       # or Predictor() for the default model
    result = predictor.predict("bus_0001-l.png")            # a file, SimpleITK image or NumPy array
    result.frames[0].p_malignant, result.label_image()      # label map in the input's geometry
    result.with_threshold(0.3)                              # new threshold, no new network run

    # A long clip as ``mffmt predict`` runs it: its maps go to their files as its frames leave the
    # network, not into memory (see ``maps_to``); write_outputs moves them into place.
    result = predictor.predict("clip.nrrd", maps_to=output_paths("out", "clip"))
    write_outputs(result, "out", "clip")
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from MFFMTCore.base.lesion_decision import LesionDecision
from MFFMTCore.base.roi import RoiInput, resolve_roi
from MFFMTCore.base.spread import evenly
from MFFMTCore.base.thresholds import check_threshold
from MFFMTCore.devices import torch_device
from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import ImageReadError, check_frame_size, check_frames
from MFFMTCore.inference.frames import FrameStack, ImageInput, as_frame_stack
from MFFMTCore.inference.gradcam import GradCamExplainer
from MFFMTCore.inference.imaging_region import ImagingRegion, find_imaging_region
from MFFMTCore.inference.input_check import (
    FeatureRecorder,
    assess_frames,
    colour_share,
    layout_scores,
    read_statistics,
)
from MFFMTCore.inference.nrrd_stream import NrrdStream, map_header
from MFFMTCore.inference.postprocessing import resize_to_frame
from MFFMTCore.inference.result import FrameAnalysis, PredictionResult, StoredMap, analysed_box
from MFFMTCore.model_file import load_model, resolve_model_path
from MFFMTCore.network.norm_adaptation import NormAdaptation, adapt_to_frames
from MFFMTCore.preprocessing import expand_box, preprocess_frames

#: The maps a clip can stream to files instead of holding them (see :meth:`Predictor.predict`).
STREAMED_MAPS = ("probability", "gradcam")


class Predictor:
    """An MFFMT model loaded once, ready to predict on any number of images.

    Args:
        model_path: a model file (``RUN_DIR/model.safetensors`` of ``mffmt train``); None for the
            default model shipped with MFFMTCore.
        device: a ``--device`` value (``auto``: CUDA, else MPS, else CPU; see :mod:`MFFMTCore.base.devices`)
            or a torch device.
        batch_size: frames per network call. Frames of a clip go through in chunks of this size,
            so memory on the network side does not grow with the clip's length.

    Raises:
        ModelFileError: no model given and none installed, or the file is missing, damaged
            (checksum mismatch) or built for another architecture.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, device: str | torch.device = "auto",
                 batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model_path = resolve_model_path(model_path)
        self.device = torch_device(device)
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
        # What :meth:`adapted` did to this predictor's network (None: the model file's statistics).
        self.norm_adaptation: dict | None = None

    @property
    def roi_margin(self) -> float:
        """Context margin added around an ROI: the one the model's lesion crops had in training.

        A model trained on lesion boxes grown by 20% (``mffmt train --mode lesion``) should see a
        user's box grown the same way; a model trained on whole frames gets the box as drawn.
        """
        recipe = self.info.training.get("recipe", {})  # the training configuration `mffmt train` records
        return float(recipe.get("margin", 0.0)) if recipe.get("mode") == "lesion" else 0.0

    def warm_up(self) -> None:
        """Predict once on a synthetic frame, so that the first real prediction does not pay for the
        network's first call (kernel selection, memory pools) and the lazily loaded libraries."""
        frame = np.random.default_rng(0).integers(0, 256, self.input_size, dtype=np.uint8)
        self.predict(frame, imaging_region="none")

    def _explain(self, x: torch.Tensor) -> torch.Tensor:
        if self._explainer is None:
            self._explainer = GradCamExplainer(self.model, class_index=len(self.class_names) - 1)
        return self._explainer(x)

    def adapted(self, inputs: Sequence[ImageInput], adaptation: NormAdaptation, roi: RoiInput | None = None,
                imaging_region: str = "auto") -> Predictor:
        """A predictor for frames of one scanner arriving together (a clip, a folder): its network's
        BatchNorm statistics blended with those of ``inputs``' frames
        (:func:`MFFMTCore.network.norm_adaptation.adapt_to_frames`). This predictor is not changed.

        The frames are read as :meth:`predict` reads them (imaging region or ROI, input size): up to
        ``adaptation.max_frames`` of them, spread evenly over the inputs and over each clip's frames.
        An input that cannot be read is left out here (its prediction reports why). With fewer than
        ``adaptation.min_frames`` frames nothing is adapted: the copy answers as this predictor does.
        The copy's :attr:`norm_adaptation` records what was done (``applied``, ``frames``, ``inputs``,
        the settings and, when applied, ``statistics_sha256`` of the adapted statistics).

        Cost: reading the chosen inputs again and one network pass (without maps) over the chosen frames.
        """
        picked = [inputs[index] for index in evenly(len(inputs), adaptation.max_frames)]
        share = math.ceil(adaptation.max_frames / max(1, len(picked)))
        crops: list[torch.Tensor] = []
        used = 0
        for image in picked:
            try:
                prepared = self.prepare(image, roi=roi, imaging_region=imaging_region)
                chosen = [self._network_input(prepared, index, index + 1)
                          for index in evenly(prepared.stack.num_frames, share)]
            except (MFFMTError, ValueError, OSError):  # a bad input: its own prediction says why
                continue
            crops.extend(chosen[: adaptation.max_frames - len(crops)])
            used += 1
        clone = copy.copy(self)
        clone._explainer = None  # Grad-CAM hooks belong to one network
        batches = (torch.cat(crops[i : i + self.batch_size]).to(self.device).contiguous(
            memory_format=torch.channels_last) for i in range(0, len(crops), self.batch_size))
        clone.model, clone.norm_adaptation = adapt_to_frames(self.model, batches, len(crops), used, adaptation)
        return clone

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
        maps_to: Mapping[str, str | os.PathLike] | None = None,
        measurements: bool = True,
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
            maps_to: files for the maps of a clip, as :func:`MFFMTCore.inference.outputs.output_paths`
                names them (its ``"probability"`` and ``"gradcam"`` entries are used). An input of
                more than one frame then holds no map in memory: each chunk of frames is analysed as
                it leaves the network and its maps are compressed into those files (a map not named
                is not kept), which :func:`~MFFMTCore.inference.outputs.write_outputs` moves into place.
                Memory then does not grow with the clip's length beyond its input frames (which stay
                in memory: N x H x W bytes grey, 3x that in colour). None: the maps are held in memory
                (N x H x W x 4 bytes each).
            measurements: measure each lesion's long and perpendicular axes and orientation
                (``LesionComponent.measurements``); False leaves them None, for callers that use only
                areas and centroids (a live stream: about 1.5 ms less per frame with a lesion).

        Returns:
            Maps in the input's exact geometry, per-frame findings and, for a 3D input, the clip's.

        Raises:
            ImageReadError: the file cannot be read; a frame or the ROI is smaller than
                :data:`MFFMTCore.files.MIN_IMAGE_SIDE` pixels; a pixel is NaN or infinite; or the network
                gave a non-finite answer. Nothing is returned for such an input: no answer is
                better than a confident wrong one.
            ValueError: the input is not a frame or a stack of frames, or the ROI misses the frame.
        """
        prepared = self.prepare(image, spacing, origin, direction, roi, gradcam, threshold, imaging_region, maps_to,
                                measurements)
        count = prepared.stack.num_frames
        for start in range(0, count, self.batch_size):
            stop = min(start + self.batch_size, count)
            try:
                self.run_network([(prepared, start, stop)])
                if prepared.error is not None:
                    raise prepared.error
                if progress is not None:
                    progress(stop, count)
            except BaseException:
                prepared.discard()  # a cancel leaves no streamed file behind
                raise
        return self.result(prepared)

    def prepare(
        self,
        image: ImageInput,
        spacing: Sequence[float] | None = None,
        origin: Sequence[float] | None = None,
        direction: Sequence[float] | None = None,
        roi: RoiInput | None = None,
        gradcam: bool = False,
        threshold: float | None = None,
        imaging_region: str = "auto",
        maps_to: Mapping[str, str | os.PathLike] | None = None,
        measurements: bool = True,
    ) -> PreparedInput:
        """Read and check an input and find the box the network sees, before any network run.

        Arguments and errors as in :meth:`predict`. The frames then go through :meth:`run_network`,
        in chunks that may hold other inputs' frames too, and :meth:`result` gives the prediction.
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
        streams = None if maps_to is None or stack.num_frames < 2 else {
            name: Path(maps_to[name]) for name in STREAMED_MAPS if name in maps_to}
        return PreparedInput(stack, box, region, threshold, gradcam, roi is not None, len(self.class_names), streams,
                             measurements)

    def run_network(self, parts: Sequence[tuple[PreparedInput, int, int]]) -> None:
        """Run frames ``start:stop`` of each part's input through the network in one call.

        The outputs go into each input's maps. An input whose frames hold a NaN or infinite pixel, or
        for which the network answers with non-finite probabilities, gets its ``error`` set and no
        further frames are run for it; the other inputs of the call are not affected.

        Args:
            parts: (input, start, stop) triples; at most :attr:`batch_size` frames in all is the usual call.
        """
        crops, runs = [], []
        for prepared, start, stop in parts:
            if prepared.error is not None:
                continue
            x0, y0, w, h = prepared.crop
            try:
                grey = self._analysed_grey(prepared, start, stop)
            except ImageReadError as error:
                prepared.error = error
                continue
            prepared.colour[start:stop] = colour_share(
                prepared.stack.pixels[start:stop, y0 : y0 + h, x0 : x0 + w], prepared.stack.components)
            prepared.layout[start:stop] = layout_scores(grey)
            crops.append(preprocess_frames(grey, self.input_size))
            runs.append((prepared, start, stop))
        if not runs:
            return
        x = torch.cat(crops).to(self.device).contiguous(memory_format=torch.channels_last)
        recorder = FeatureRecorder(self.model)
        with torch.inference_mode(), recorder:
            output = self.model(x)
            logits = output.class_logits.float() / self.temperature
            classes = torch.softmax(logits, dim=1).cpu().numpy()
        features = recorder.take()
        cam = self._explain(x) if any(prepared.gradcam for prepared, _, _ in runs) else None
        first = 0
        for prepared, start, stop in runs:
            last = first + stop - start
            x0, y0, w, h = prepared.crop
            probability, gradcam = prepared.chunk_maps(start, stop)
            with torch.inference_mode():
                lesion = torch.sigmoid(resize_to_frame(output.mask_logits[first:last], (h, w)))
            probability[:, y0 : y0 + h, x0 : x0 + w] = lesion.cpu().numpy()
            prepared.classes[start:stop] = classes[first:last]
            if features is not None:
                prepared.features.append(features[first:last])
            if not (np.isfinite(prepared.classes[start:stop]).all() and np.isfinite(probability).all()):
                prepared.error = ImageReadError(prepared.stack.source, f"the network gave non-finite probabilities "
                                                f"for frames {start}-{stop - 1}; no answer is given for this input")
                prepared.discard()
            else:
                if gradcam is not None:
                    gradcam[:, y0 : y0 + h, x0 : x0 + w] = resize_to_frame(cam[first:last], (h, w)).cpu().numpy()
                prepared.chunk_done(start, probability, gradcam)
            prepared.frames_done += stop - start
            first = last

    @staticmethod
    def _analysed_grey(prepared: PreparedInput, start: int, stop: int) -> np.ndarray:
        """Grey frames ``start:stop`` of the part the network sees, checked.

        Raises:
            ImageReadError: a pixel is NaN or infinite.
        """
        x0, y0, w, h = prepared.crop
        grey = prepared.stack.grey(start, stop)[:, y0 : y0 + h, x0 : x0 + w]
        check_frames(grey, prepared.stack.source, first_frame=start)
        return grey

    def _network_input(self, prepared: PreparedInput, start: int, stop: int) -> torch.Tensor:
        """Frames ``start:stop`` as the network takes them, (n, 1, H, W) on the CPU."""
        return preprocess_frames(self._analysed_grey(prepared, start, stop), self.input_size)

    def result(self, prepared: PreparedInput) -> PredictionResult:
        """The prediction of an input whose frames have all been through :meth:`run_network`.

        Raises:
            ImageReadError: the input's frames or the network's answer were not finite (see :meth:`predict`).
        """
        if prepared.error is not None:
            prepared.discard()
            raise prepared.error
        # The statistics describe whole scans (fitted without ROI): a lesion box is not compared with them.
        distance = None
        if self.input_statistics is not None and prepared.features and not prepared.roi_given:
            distance = self.input_statistics.distance(np.concatenate(prepared.features))
        probability, gradcam, analysis = prepared.finished_maps()
        return PredictionResult(
            probability=probability,
            class_probabilities=prepared.classes,
            class_names=self.class_names,
            geometry=prepared.stack.geometry,
            threshold=prepared.threshold,
            source=prepared.stack.source,
            roi=prepared.box,
            gradcam=gradcam,
            input_frames=prepared.stack,
            lesion_decision=self.lesion_decision,
            imaging_region=prepared.region,
            input_checks=assess_frames(prepared.colour, distance,
                                       None if prepared.roi_given else prepared.layout),
            analysis=analysis,
            measurements=prepared.measurements,
        )


@dataclass(eq=False)
class PreparedInput:
    """An input read and checked for :meth:`Predictor.run_network`, and the maps its frames fill.

    Args:
        stack: the input's frames.
        box: the ROI (context margin included) the network sees, or None.
        region: the imaging region the network sees when there is no ROI, or None (the whole frame).
        threshold: lesion threshold of its result.
        gradcam: whether Grad-CAM maps are computed.
        roi_given: whether the user gave an ROI (the feature-distance check is then left out).
        class_count: the model's number of classes.
        streams: for a clip predicted with ``maps_to``: map name -> the file it is streamed to (see
            :meth:`Predictor.predict`); None: the maps are held in memory.
        measurements: whether lesions are measured (see :meth:`Predictor.predict`).
        error: why the input has no answer (set by :meth:`Predictor.run_network`), or None.
        frames_done: frames that have been through the network.
    """

    stack: FrameStack
    box: tuple[int, int, int, int] | None
    region: ImagingRegion | None
    threshold: float
    gradcam: bool
    roi_given: bool
    class_count: int
    streams: dict[str, Path] | None = None
    measurements: bool = True
    error: Exception | None = None
    frames_done: int = 0
    colour: np.ndarray = field(init=False, repr=False)
    layout: np.ndarray = field(init=False, repr=False)  # the frames' layout_scores (upside down, dual view)
    classes: np.ndarray = field(init=False, repr=False)  # (N, C) class probabilities
    features: list[np.ndarray] = field(default_factory=list, repr=False)
    # In memory: the whole (N, H, W) maps, allocated at the first network run.
    _maps: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, repr=False)
    # Streamed: the frames' findings so far and the open files, made at the first network run.
    _analysis: FrameAnalysis | None = field(default=None, repr=False)
    _open: dict[str, NrrdStream] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.colour = np.zeros(self.stack.num_frames)
        self.layout = np.zeros((self.stack.num_frames, 2))
        self.classes = np.empty((self.stack.num_frames, self.class_count), dtype=np.float32)

    @property
    def crop(self) -> tuple[int, int, int, int]:
        """(x, y, w, h) of the part of each frame the network sees."""
        return analysed_box(self.box, self.region, self.stack.frame_shape)

    @property
    def complete(self) -> bool:
        """Every frame has been through the network, or the input failed."""
        return self.error is not None or self.frames_done >= self.stack.num_frames

    def chunk_maps(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(probability, Grad-CAM or None) of frames ``start:stop`` to fill, zero where nothing is pasted:
        views of the whole maps, or new arrays for a streamed clip."""
        count, (height, width) = self.stack.num_frames, self.stack.frame_shape
        if self.streams is not None:
            shape = (stop - start, height, width)
            return np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32) if self.gradcam else None
        if self._maps is None:
            # Outside the box there is no lesion: the maps start at zero and the box is pasted in.
            self._maps = (np.zeros((count, height, width), dtype=np.float32),
                          np.zeros((count, height, width), dtype=np.float32) if self.gradcam else None)
        probability, gradcam = self._maps
        return probability[start:stop], gradcam[start:stop] if gradcam is not None else None

    def chunk_done(self, start: int, probability: np.ndarray, gradcam: np.ndarray | None) -> None:
        """Frames from ``start`` are through the network: a streamed clip analyses them and writes their
        maps to its files (in frame order), and keeps neither."""
        if self.streams is None:
            return
        if self._analysis is None:
            box = self.crop
            self._analysis = FrameAnalysis(self.stack.num_frames, self.stack.frame_shape, self.stack.geometry,
                                           self.threshold, box[2] * box[3], self.measurements)
            shape = (self.stack.num_frames, *self.stack.frame_shape)
            header = map_header(self.stack.geometry, shape)
            self._open = {name: NrrdStream(path, header, shape, np.float32) for name, path in self.streams.items()
                          if name == "probability" or self.gradcam}
        self._analysis.add(start, probability)
        for name, values in (("probability", probability), ("gradcam", gradcam)):
            if name in self._open:
                if self._open[name].frames_written != start:
                    raise ValueError(f"{self.stack.source}: frames must reach a streamed map in order")
                self._open[name].write(values)

    def finished_maps(self) -> tuple[StoredMap | None, StoredMap | None, FrameAnalysis | None]:
        """(probability, Grad-CAM, analysis) for the result once every frame is through: the arrays
        (analysis None: the result takes it), or a streamed clip's closed files and its analysis."""
        if self.streams is None:
            if self._maps is None:
                raise ValueError(f"{self.stack.source}: no frame has been through the network")
            return (*self._maps, None)
        if self._analysis is None:
            raise ValueError(f"{self.stack.source}: no frame has been through the network")
        for stream in self._open.values():
            stream.close()
        return self._open.get("probability"), self._open.get("gradcam"), self._analysis

    def discard(self) -> None:
        """Drop a streamed clip's files (an error, a cancel): no temporary file is left."""
        for stream in self._open.values():
            if not stream.committed:
                stream.discard()
