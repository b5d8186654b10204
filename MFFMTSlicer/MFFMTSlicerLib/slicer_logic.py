"""MFFMTSlicerLogic: segment, classify and retrain from Slicer, without any GUI. Slicer only.

The logic is put together from one class per concern: :class:`RequirementsLogic` (first-use
packages), :class:`ModelsLogic` (default model and models folder), :class:`PredictionLogic`
(segment & classify, through the warm worker of :mod:`MFFMTSlicerLib.worker`),
:class:`TrainingLogic` (retrain) and :class:`LiveLogic` (follow a changing image, frame by frame).
Work runs in the background, as tasks (:mod:`MFFMTSlicerLib.tasks`): ``start...`` methods
return a running task, and ``process``, ``processFolder`` and ``train`` wait for theirs. The logic
raises exceptions and never opens a dialog.
"""

# No "from __future__ import annotations": parameterNodeWrapper reads the annotations as types.
import os
from pathlib import Path
from typing import Annotated, Any, Union

import slicer
from slicer import (
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
)
from slicer.parameterNodeWrapper import (
    Choice,
    Decimals,
    Default,
    SingleStep,
    WithinRange,
    parameterNodeWrapper,
)
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from MFFMTCore.base.choices import BACKBONES
from MFFMTCore.base.devices import DEVICE_LABELS
from MFFMTCore.base.fine_tuning import FINE_TUNE_DEFAULTS
from MFFMTCore.base.thresholds import SLIDER_RANGE, THRESHOLD_STEP
from MFFMTSlicerLib.commands import TRAIN_KEYWORDS
from MFFMTSlicerLib.slicer_live import LiveLogic
from MFFMTSlicerLib.slicer_models import ModelsLogic
from MFFMTSlicerLib.slicer_prediction import PredictionLogic
from MFFMTSlicerLib.slicer_requirements import RequirementsLogic
from MFFMTSlicerLib.slicer_training import FINE_TUNE, FROM_SCRATCH, SUGGESTED_LEARNING_RATE, TrainingLogic
from MFFMTSlicerLib.worker import WarmWorker

#: The retraining parameters' defaults. Fine-tuning sends only the values a user changed from these, so
#: that the run inherits its parent's recipe and takes the fine-tuning defaults, as
#: ``mffmt train --init-model MODEL`` alone does (:func:`trainingOptions`).
RETRAIN_DEFAULTS: dict[str, Any] = {"epochs": FINE_TUNE_DEFAULTS["epochs"], "lr": SUGGESTED_LEARNING_RATE[FINE_TUNE],
                                    "lambdaLoc": 1.0, "batchSize": 8, "valFraction": 0.2}


@parameterNodeWrapper
class MFFMTSlicerParameterNode:
    """The module's settings, saved with the scene.

    inputNode: image or clip volume, or a sequence of frames, to segment and classify.
    roiNode: optional box: only the pixels inside are classified (the paper's ROI mode).
    threshold: lesion probability threshold of the segmentation.
    gradcam: also compute a Grad-CAM heat map of the malignant class.
    device: where the network runs, for inference and training: Automatic (an NVIDIA GPU, else an
        Apple GPU, else the CPU), CPU, GPU (CUDA) or Apple GPU (MPS).
    modelPath: the selected model file.
    result: the lesion segmentation of the last run (the threshold slider redraws it).
    The others are the retraining settings; those named as an option of ``mffmt train`` in camelCase
    (``batchSize`` for ``batch_size``, as the console's keywords) are passed to it as that option
    (:func:`trainingOptions`), and their ranges lie within the option's (a test checks it).
    """

    inputNode: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode, None]
    roiNode: vtkMRMLMarkupsROINode
    threshold: Annotated[float, WithinRange(*SLIDER_RANGE), Decimals(2), SingleStep(THRESHOLD_STEP), Default(0.5)]
    gradcam: bool
    device: Annotated[str, Choice(list(DEVICE_LABELS)), Default(next(iter(DEVICE_LABELS)))]
    modelPath: str
    result: vtkMRMLSegmentationNode
    useSceneData: bool
    backbone: Annotated[str, Choice(list(BACKBONES)), Default(BACKBONES[0])]
    startFrom: Annotated[str, Choice([FINE_TUNE, FROM_SCRATCH]), Default(FINE_TUNE)]
    epochs: Annotated[int, WithinRange(1, 1000), Default(RETRAIN_DEFAULTS["epochs"])]
    lr: Annotated[float, WithinRange(1e-6, 0.1), Decimals(6), SingleStep(1e-5), Default(RETRAIN_DEFAULTS["lr"])]
    lambdaLoc: Annotated[float, WithinRange(0.0, 10.0), Decimals(2), SingleStep(0.1),
                         Default(RETRAIN_DEFAULTS["lambdaLoc"])]
    batchSize: Annotated[int, WithinRange(1, 256), Default(RETRAIN_DEFAULTS["batchSize"])]
    valFraction: Annotated[float, WithinRange(0.05, 0.5), Decimals(2), SingleStep(0.05),
                           Default(RETRAIN_DEFAULTS["valFraction"])]
    modelName: Annotated[str, Default("my_model")]


#: Parameter name -> the ``mffmt train`` option it sets: the parameters spelled as a training keyword
#: (:data:`MFFMTSlicerLib.commands.TRAIN_KEYWORDS`). ``device`` is the panel's own (a device label, for
#: inference too); the logic turns it into the option.
TRAINING_PARAMETERS = {keyword: name for keyword, name in TRAIN_KEYWORDS.items()
                       if keyword in MFFMTSlicerParameterNode.allParameters}
TRAINING_PARAMETERS_BY_OPTION = {name: keyword for keyword, name in TRAINING_PARAMETERS.items()}


def trainingOptions(parameters: MFFMTSlicerParameterNode) -> dict[str, Any]:
    """The panel's values of ``mffmt train`` options, by option name (for :meth:`TrainingLogic.startTraining`).

    When fine-tuning, a value left at its default (:data:`RETRAIN_DEFAULTS`) is not sent, and the
    architecture comes from the model: the run then inherits from its parent exactly as
    ``mffmt train --init-model MODEL`` does.
    """
    options = {option: getattr(parameters, parameter) for parameter, option in TRAINING_PARAMETERS.items()}
    if parameters.startFrom == FINE_TUNE:
        options = {option: value for option, value in options.items()
                   if TRAINING_PARAMETERS_BY_OPTION[option] in RETRAIN_DEFAULTS
                   and value != RETRAIN_DEFAULTS[TRAINING_PARAMETERS_BY_OPTION[option]]}
    return options


class MFFMTSlicerLogic(ScriptedLoadableModuleLogic, RequirementsLogic, ModelsLogic, PredictionLogic, TrainingLogic,
                       LiveLogic):
    """Segment and classify breast lesions in ultrasound volumes, and retrain the model.

    Args:
        modelsFolder: where trained and added models are kept; default: the folder set in the
            application settings (``MFFMTSlicer/modelsFolder``), else ``~/.MFFMTSlicer/models``.
        workRoot: where each task gets its temporary working folder; default: Slicer's temporary folder.
    """

    def __init__(self, modelsFolder: str | os.PathLike | None = None, workRoot: str | os.PathLike | None = None):
        ScriptedLoadableModuleLogic.__init__(self)
        self._modelsFolder = Path(modelsFolder).absolute() if modelsFolder is not None else None
        self.workRoot = Path(workRoot if workRoot is not None else slicer.app.temporaryPath).absolute()
        self.worker = WarmWorker()

    def getParameterNode(self) -> MFFMTSlicerParameterNode:
        return MFFMTSlicerParameterNode(super().getParameterNode())
