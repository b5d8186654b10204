"""Slicer's real core libraries (the ``slicer-core`` wheel) set up as Slicer sets them up, for tests.

``slicer-core`` (Kitware's build of Slicer's MRML and module logic libraries as a Python package)
gives the real scene, nodes, storage and module logics, and ``slicer.util``; it has no Qt, no
application object, no ``slicer.mrmlScene`` global, no ``slicer.modules`` and no Slicer Python
files. :func:`start` builds those few objects from the real classes, the way Slicer's application
does at start-up: one scene, an application logic with the module logics it needs (colours, subject
hierarchy, volumes, segmentations, sequences, markups, layout), and a loader with Slicer's
``coreIOManager().loadNodes`` for the file types the module loads (volumes through
``vtkSlicerVolumesLogic.AddArchetypeVolume``, segmentations through
``vtkSlicerSegmentationsModuleLogic.LoadSegmentationFromFile``). Stand-ins for the Python files
Slicer adds to the ``slicer`` package (``ScriptedLoadableModule``, ``parameterNodeWrapper``,
``i18n``) and for the ``qt`` module are in this folder; each says what it keeps.

Then ``import MFFMTSlicer`` loads the module as Slicer does.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[2] / "MFFMTSlicer"


class CoreIOManager:
    """Slicer's file loading (qSlicerCoreIOManager) for the file types the module loads."""

    def __init__(self, modules):
        self.modules = modules

    def fileType(self, fileName):
        return "SegmentationFile" if str(fileName).endswith(".seg.nrrd") else "VolumeFile"

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None):
        fileName = str(properties["fileName"])
        name = properties.get("name") or Path(fileName).name.split(".")[0]
        if fileType == "VolumeFile":
            options = 1 if properties.get("labelmap") else 0
            options |= 4 if properties.get("singleFile") else 0
            node = self.modules.volumes.logic().AddArchetypeVolume(fileName, name, options)
        elif fileType == "SegmentationFile":
            node = self.modules.segmentations.logic().LoadSegmentationFromFile(fileName, False, name)
        else:
            raise ValueError(f"{fileType}: not a file type of the slicer-core test loader")
        if node is None:
            return False
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True


class Application:
    """The parts of ``slicer.app`` the module's logic uses, on the real application logic."""

    def __init__(self, applicationLogic, modules, temporaryPath):
        self._applicationLogic = applicationLogic
        self._ioManager = CoreIOManager(modules)
        self.temporaryPath = str(temporaryPath)

    def applicationLogic(self):
        return self._applicationLogic

    def coreIOManager(self):
        return self._ioManager


def _moduleEntry(logic):
    return types.SimpleNamespace(logic=lambda: logic)


def start(temporaryPath: str | Path):
    """Set up Slicer's globals on slicer-core and make ``import MFFMTSlicer`` work; returns the scene."""
    sys.path[:0] = [str(HERE), str(MODULE_DIR)]
    import slicer

    if str(HERE / "slicer_python") not in slicer.__path__:
        slicer.__path__.append(str(HERE / "slicer_python"))
    scene = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(scene)
    logics = {}
    for name, cls in (("colors", slicer.vtkSlicerColorLogic), ("subjecthierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
                      ("volumes", slicer.vtkSlicerVolumesLogic), ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("sequences", slicer.vtkSlicerSequencesLogic), ("markups", slicer.vtkSlicerMarkupsLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(applicationLogic)
        logic.SetMRMLScene(scene)
        applicationLogic.SetModuleLogic(name, logic)
        logics[name] = logic
    applicationLogic.SetColorLogic(logics["colors"])
    layoutLogic = slicer.vtkMRMLLayoutLogic()  # adds the layout node with Slicer's layouts
    layoutLogic.SetMRMLScene(scene)
    modules = types.SimpleNamespace(**{name: _moduleEntry(logic) for name, logic in logics.items()})
    slicer.mrmlScene = scene
    slicer.modules = modules
    slicer.app = Application(applicationLogic, modules, temporaryPath)
    slicer._slicerCoreKeepAlive = (applicationLogic, layoutLogic, logics)
    return scene
