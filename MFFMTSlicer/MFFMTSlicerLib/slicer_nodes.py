"""MRML nodes for MFFMT inputs and results. Slicer only: imported by the module, never outside Slicer.

Voxels and geometry leave the scene as numpy arrays and IJK-to-RAS matrices (written to files by
:mod:`MFFMTSlicerLib.volumes`); results come back as a segmentation with the "Lesion" segment, a
hidden probability volume for re-thresholding, a table and a point list of labelled centroids.
The result nodes of one run refer to each other through node references, so the threshold slider
and a saved scene find them again. Every function takes the scene from the nodes it is given.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from MFFMTCore.base.geometry import records_spacing
from MFFMTCore.base.terminology import LESION_TERMINOLOGY, SEGMENT_COLOR, SEGMENT_NAME
from MFFMTSlicerLib.progress import EpochRecord
from MFFMTSlicerLib.results import centroid_ras, lesion_label, results_table
from MFFMTSlicerLib.volumes import stack_frames, write_volume

# Node reference roles from a result segmentation to the other nodes of its run.
INPUT_ROLE = "MFFMT.input"
PROBABILITY_ROLE = "MFFMT.probability"
TABLE_ROLE = "MFFMT.results"
POINTS_ROLE = "MFFMT.lesions"
GRADCAM_ROLE = "MFFMT.gradcam"
#: The two caliper lines (markups line nodes) of the key frame's lesion: long and perpendicular axis.
CALIPER_ROLES = ("MFFMT.longAxis", "MFFMT.perpendicularAxis")
# Attribute of a clip volume made from a sequence: the sequence node's ID.
SOURCE_SEQUENCE_ATTRIBUTE = "MFFMT.sourceSequence"
# Attribute of result volumes (probability, Grad-CAM): not images to segment or train on.
RESULT_VOLUME_ATTRIBUTE = "MFFMT.resultVolume"
# Attribute of a clip volume made from a sequence, and of a result segmentation: "1" when the input
# records a physical pixel spacing, "0" when it is a picture (lesion areas then have no mm²).
SPACING_KNOWN_ATTRIBUTE = "MFFMT.spacingKnown"


def nodesByClass(scene, className: str) -> list:
    """The nodes of ``scene`` of a class (``slicer.util.getNodesByClass`` reads the global scene)."""
    collection = scene.GetNodesByClass(className)
    nodes = [collection.GetItemAsObject(index) for index in range(collection.GetNumberOfItems())]
    collection.UnRegister(None)
    return nodes


def spacingKnown(volumeNode) -> bool:
    """Whether a volume's pixel spacing is a measurement, by MFFMTCore's rule for files.

    A volume read from a picture (PNG, JPEG, BMP, TIFF) has ITK's unit spacing, not a physical one;
    a volume without a file (made in Slicer) is taken as measured when its spacing is not the unit
    default, as MFFMTCore takes an in-memory image.
    """
    recorded = volumeNode.GetAttribute(SPACING_KNOWN_ATTRIBUTE)
    if recorded is not None:
        return recorded == "1"
    storageNode = volumeNode.GetStorageNode()
    fileName = storageNode.GetFileName() if storageNode is not None else None
    if fileName:
        return records_spacing(fileName)
    return any(abs(spacing - 1.0) > 1e-9 for spacing in volumeNode.GetSpacing())


def ijkToRasArray(volumeNode) -> np.ndarray:
    """The volume's IJK-to-RAS matrix as a 4x4 numpy array."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volumeArray(volumeNode) -> np.ndarray:
    """The voxels of a volume node, (k, j, i) or (k, j, i, c).

    Raises:
        ValueError: the node holds no image.
    """
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError(f"{volumeNode.GetName() if volumeNode else 'No volume'}: the volume holds no image")
    return slicer.util.arrayFromVolume(volumeNode)


def writeVolumeNode(volumeNode, path: str | os.PathLike, compress: bool = False) -> Path:
    """Write a volume node's voxels with their geometry (its own, without parent transforms) to ``path``."""
    return write_volume(volumeArray(volumeNode), ijkToRasArray(volumeNode), path, compress)


def clipFromSequence(sequenceNode):
    """A scalar volume whose slices are the frames of a sequence of 2D images (made once, then reused).

    Colour frames become grey; the clip takes the geometry of the first frame.

    Raises:
        ValueError: the sequence holds no volumes, or frames differ in size or are not 2D.
    """
    count = sequenceNode.GetNumberOfDataNodes()
    for node in nodesByClass(sequenceNode.GetScene(), "vtkMRMLScalarVolumeNode"):
        if (node.GetAttribute(SOURCE_SEQUENCE_ATTRIBUTE) == sequenceNode.GetID() and node.GetImageData() is not None
                and node.GetImageData().GetDimensions()[2] == count):
            return node
    frames = [sequenceNode.GetNthDataNode(index) for index in range(count)]
    if not frames or not all(frame is not None and frame.IsA("vtkMRMLVolumeNode") for frame in frames):
        raise ValueError(f"{sequenceNode.GetName()}: the sequence holds no image frames")
    clip = stack_frames([volumeArray(frame) for frame in frames])
    clipNode = slicer.util.addVolumeFromArray(clip, ijkToRasArray(frames[0]), f"{sequenceNode.GetName()} clip")
    clipNode.SetAttribute(SOURCE_SEQUENCE_ATTRIBUTE, sequenceNode.GetID())
    clipNode.SetAttribute(SPACING_KNOWN_ATTRIBUTE, "1" if spacingKnown(frames[0]) else "0")
    return clipNode


def sequenceOfProxy(volumeNode):
    """The sequence a volume shows in a sequence browser, or None."""
    browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(volumeNode)
    return browser.GetSequenceNode(volumeNode) if browser else None


def lesionSegmentId(segmentationNode) -> str:
    """The ID of the "Lesion" segment, made the standard lesion segment: name, colour and terminology.

    A segmentation with a single segment of another name (drawn by hand, or from an older file) has
    that segment renamed; one without segments gets an empty "Lesion" segment.
    """
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME)
    if not segmentId and segmentation.GetNumberOfSegments() == 1:
        segmentId = segmentation.GetNthSegmentID(0)
    if not segmentId:
        segmentId = segmentation.AddEmptySegment(SEGMENT_NAME, SEGMENT_NAME, list(SEGMENT_COLOR))
    segment = segmentation.GetSegment(segmentId)
    segment.SetName(SEGMENT_NAME)
    segment.SetColor(*SEGMENT_COLOR)
    segment.SetTag(segment.GetTerminologyEntryTagName(), LESION_TERMINOLOGY.tag())
    return segmentId


def placeLike(node, referenceVolume) -> None:
    """Put ``node`` in the subject-hierarchy folder of ``referenceVolume`` and, when it can be
    transformed (a table cannot), under the same parent transform."""
    if node.IsA("vtkMRMLTransformableNode"):
        node.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
    shNode = node.GetScene().GetSubjectHierarchyNode()
    parent = shNode.GetItemParent(shNode.GetItemByDataNode(referenceVolume))
    shNode.SetItemParent(shNode.GetItemByDataNode(node), parent)


def loadLesionSegmentation(path: str | os.PathLike, inputVolume):
    """Load a ``<stem>.seg.nrrd`` of ``mffmt predict`` as the lesion segmentation of ``inputVolume``."""
    segmentationNode = slicer.util.loadSegmentation(str(path))
    segmentationNode.SetName(inputVolume.GetScene().GenerateUniqueName(f"{inputVolume.GetName()} lesion"))
    attachToInput(segmentationNode, inputVolume)
    # Its file is in a temporary folder: "Save" must write the data, not refer to that file.
    segmentationNode.StorableModified()
    return segmentationNode


def attachToInput(segmentationNode, inputVolume) -> str:
    """Make ``segmentationNode`` the lesion segmentation of ``inputVolume``: placed like it, on its
    voxels, referencing it; returns the lesion segment's ID (made when missing)."""
    # Under the input's transform first: the reference geometry is computed relative to the
    # segmentation's own transform, so set afterwards it matches the input's voxels exactly.
    placeLike(segmentationNode, inputVolume)
    # The input as source volume: Segment Editor and DICOM SEG export use its geometry.
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
    segmentationNode.SetNodeReferenceID(segmentationNode.GetReferenceImageGeometryReferenceRole(), inputVolume.GetID())
    segmentationNode.SetNodeReferenceID(INPUT_ROLE, inputVolume.GetID())
    return lesionSegmentId(segmentationNode)


def addResultNode(segmentationNode, inputVolume, className: str, name: str, role: str):
    """A new node of ``className`` named ``name`` (made unique), placed like the input, that the
    segmentation references under ``role``."""
    scene = inputVolume.GetScene()
    node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    if node.IsA("vtkMRMLDisplayableNode"):
        node.CreateDefaultDisplayNodes()
    placeLike(node, inputVolume)
    segmentationNode.SetNodeReferenceID(role, node.GetID())
    return node


def loadHiddenVolume(path: str | os.PathLike, name: str, referenceVolume):
    """Load a result volume (probability, Grad-CAM) without showing it in the slice views."""
    volumeNode = slicer.util.loadVolume(str(path), {"show": False, "singleFile": True})
    volumeNode.SetName(referenceVolume.GetScene().GenerateUniqueName(name))
    volumeNode.SetAttribute(RESULT_VOLUME_ATTRIBUTE, "1")
    placeLike(volumeNode, referenceVolume)
    volumeNode.StorableModified()  # read from a temporary folder: saving must write it
    return volumeNode


def rethreshold(segmentationNode, threshold: float, lesionFree: Collection[int] = ()) -> np.ndarray:
    """Redraw the "Lesion" segment from the run's probability volume at ``threshold``; the probabilities.

    Frames in ``lesionFree`` (those the model's lesion rule found lesion-free) stay empty.

    Raises:
        ValueError: the segmentation was not made by this module (no probability volume).
    """
    probabilityNode = segmentationNode.GetNodeReference(PROBABILITY_ROLE)
    if probabilityNode is None:
        raise ValueError(f"{segmentationNode.GetName()}: no lesion probability volume; segment the image again")
    probability = volumeArray(probabilityNode)
    mask = (probability >= threshold).astype(np.uint8)
    for frame in lesionFree:
        if 0 <= frame < len(mask):
            mask[frame] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, lesionSegmentId(segmentationNode),
                                                     probabilityNode)
    return probability


def fillResultsTable(tableNode, rows: list[dict[str, Any]]) -> None:
    """Replace the table's contents with the results: one row per frame."""
    arrayClasses = {"string": vtk.vtkStringArray, "int": vtk.vtkIntArray, "double": vtk.vtkDoubleArray}
    wasModifying = tableNode.StartModify()
    tableNode.RemoveAllColumns()
    for column in results_table(rows):
        array = arrayClasses[column.kind]()
        array.SetName(column.title)
        for value in column.values:
            array.InsertNextValue(value)
        tableNode.AddColumn(array)
    tableNode.EndModify(wasModifying)


def fillLesionPoints(pointsNode, rows: list[dict[str, Any]]) -> None:
    """One locked point per frame with a lesion, at its centroid, labelled e.g. "Malignant 0.87"."""
    wasModifying = pointsNode.StartModify()
    pointsNode.RemoveAllControlPoints()
    for row in rows:
        position = centroid_ras(row)
        if position is None:
            continue
        index = pointsNode.AddControlPoint(list(position), lesion_label(row, with_frame=len(rows) > 1))
        pointsNode.SetNthControlPointLocked(index, True)
    pointsNode.EndModify(wasModifying)


def fillCaliperLines(lineNodes: list, calipers: list[dict[str, Any]]) -> None:
    """Draw the lesion's long and perpendicular diameters as locked two-point lines, caliper style,
    each labelled with its length; empty lines when there is no lesion."""
    for index, lineNode in enumerate(lineNodes):
        wasModifying = lineNode.StartModify()
        lineNode.RemoveAllControlPoints()
        if index < len(calipers):
            caliper = calipers[index]
            lineNode.AddControlPoint(list(caliper["start"]), caliper["label"])
            lineNode.AddControlPoint(list(caliper["end"]), "")
            for point in range(2):
                lineNode.SetNthControlPointLocked(point, True)
        lineNode.EndModify(wasModifying)


def showResultsTable(tableNode) -> None:
    """Show a table in the layout's table view, switching to a layout with one when it has none.

    ``PropagateTableSelection`` only fills table views that exist; Slicer's default layouts have none.
    """
    layoutNode = tableNode.GetScene().GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layoutNode is not None and "vtkMRMLTableViewNode" not in (layoutNode.GetCurrentLayoutDescription() or ""):
        layoutNode.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
    applicationLogic = slicer.app.applicationLogic()
    applicationLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
    applicationLogic.PropagateTableSelection()


def showHeatmap(backgroundVolume, heatmapVolume, opacity: float = 0.4) -> None:
    """Show a 0-1 heat map (Grad-CAM) in colour over the input in all slice views."""
    displayNode = heatmapVolume.GetDisplayNode()
    if displayNode is None:
        heatmapVolume.CreateDefaultDisplayNodes()
        displayNode = heatmapVolume.GetDisplayNode()
    displayNode.SetAndObserveColorNodeID("vtkMRMLColorTableNodeRainbow")
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(0.0, 1.0)
    slicer.util.setSliceViewerLayers(background=backgroundVolume, foreground=heatmapVolume,
                                     foregroundOpacity=opacity)


# Training curves: table column and plot colour.
CURVES = (("loss", (0.2, 0.4, 0.8)), ("val AUC", (0.85, 0.33, 0.1)), ("val Dice", (0.2, 0.65, 0.3)))


def trainingCurvesChart(scene):
    """A table of per-epoch values and a chart plotting loss, validation AUC and Dice against epoch."""
    tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", "MFFMT training curves")
    updateTrainingCurves(tableNode, [])
    chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "MFFMT training")
    chartNode.SetTitle("Training")
    chartNode.SetXAxisTitle("epoch")
    for column, color in CURVES:
        seriesNode = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"MFFMT {column}")
        seriesNode.SetAndObserveTableNodeID(tableNode.GetID())
        seriesNode.SetXColumnName("epoch")
        seriesNode.SetYColumnName(column)
        seriesNode.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        seriesNode.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        seriesNode.SetColor(*color)
        chartNode.AddAndObservePlotSeriesNodeID(seriesNode.GetID())
    return tableNode, chartNode


def curvesInScene(curves, scene) -> bool:
    """Whether a (table, chart) pair of :func:`trainingCurvesChart` is still in ``scene`` (a closed
    scene removes them)."""
    return curves is not None and all(scene.IsNodePresent(node) for node in curves)


def updateTrainingCurves(tableNode, history: list[EpochRecord]) -> None:
    """Put one row per finished epoch into the curves table (the chart follows)."""
    columns = [np.array([getattr(record, name) for record in history], dtype=float)
               for name in ("epoch", "loss", "val_auc", "val_dice")]
    slicer.util.updateTableFromArray(tableNode, columns, ["epoch"] + [column for column, _ in CURVES])
