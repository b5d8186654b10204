"""Inference: lesion maps and benign/malignant probabilities for ultrasound frames and clips.

- :class:`Predictor` loads a model file and predicts on files, SimpleITK images or NumPy arrays.
- :class:`PredictionResult` holds the maps in the input's geometry and the per-frame and clip-level
  findings; its threshold can be changed without running the network again.
- The writers put a result on disk as Slicer reads it (segmentation, probability map, overlay).
"""

from MFFMTCore.base.clip_finding import ClipResult, aggregate_frames
from MFFMTCore.base.components import LesionComponent, find_components
from MFFMTCore.base.geometry import ImageGeometry
from MFFMTCore.base.roi import PhysicalBox, resolve_roi
from MFFMTCore.inference.frames import FrameStack, as_frame_stack
from MFFMTCore.inference.gradcam import GradCamExplainer
from MFFMTCore.inference.postprocessing import resize_to_frame
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.inference.result import FrameResult, PredictionResult

__all__ = [
    "ClipResult", "FrameResult", "FrameStack", "GradCamExplainer", "ImageGeometry", "LesionComponent",
    "PhysicalBox", "PredictionResult", "Predictor", "aggregate_frames", "as_frame_stack", "find_components",
    "resize_to_frame", "resolve_roi",
]
