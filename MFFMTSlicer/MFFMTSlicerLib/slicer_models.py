"""The logic's models: the shipped default model and the models folder. Slicer only.

Listing reads model headers only (no torch in Slicer's process); a model the worker failed to load
(its checksum, metadata or weights) is listed as unusable with the worker's reason.
"""

import os
from pathlib import Path

from MFFMTCore.base.model_metadata import default_model_path
from MFFMTSlicerLib.models import ModelEntry, ModelRegistry
from MFFMTSlicerLib.worker import WarmWorker


class ModelsLogic:
    """The models a user can choose. ``self._modelsFolder`` and ``self.worker`` are set by the logic's constructor."""

    _modelsFolder: Path | None = None
    worker: WarmWorker

    @property
    def modelsFolder(self) -> Path:
        """Where trained and added models are kept: the logic's argument, else the application setting
        ``MFFMTSlicer/modelsFolder``, else ``~/.MFFMTSlicer/models``."""
        if self._modelsFolder is not None:
            return self._modelsFolder
        import qt  # only here: the folder can be given without Qt (scripts, tests)

        folder = qt.QSettings().value("MFFMTSlicer/modelsFolder")
        return Path(folder) if folder else Path.home() / ".MFFMTSlicer" / "models"

    @staticmethod
    def defaultModelPath() -> Path | None:
        """The model that ships with the extension, or None."""
        return default_model_path()

    def modelRegistry(self) -> ModelRegistry:
        return ModelRegistry(self.modelsFolder, self.defaultModelPath(), unusable=self.worker.unusable)

    def models(self) -> list[ModelEntry]:
        """The models to choose from: the default model first, then the models folder."""
        return self.modelRegistry().entries()

    def addModelFile(self, path: str | os.PathLike, name: str | None = None) -> Path:
        """Copy a model file into the models folder (never replacing one); the new path."""
        return self.modelRegistry().add(path, name)
