"""MFFMTSlicer: breast-lesion segmentation and benign/malignant classification in ultrasound (MFFMT).

The module file holds what Slicer looks up by name: the module description, the widget, the logic
and the self-test. The widget and the logic live in MFFMTSlicerLib (slicer_widget, slicer_logic);
everything that needs no Slicer is in MFFMTSlicerLib's Slicer-free modules, and the network in the
MFFMTCore package, which runs in a separate process.
"""

import csv
import hashlib
import logging
import math
import shutil
import traceback
import unittest
from pathlib import Path

import slicer
import vtk

# MFFMTSlicerLib first: importing it puts MFFMTCore (next to this file, or one folder up) on sys.path.
from MFFMTSlicerLib.slicer_logic import MFFMTSlicerLogic
from MFFMTSlicerLib.slicer_widget import MFFMTSlicerWidget
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

from MFFMTCore.base.terminology import LESION_TERMINOLOGY, SEGMENT_NAME

__all__ = ["MFFMTSlicer", "MFFMTSlicerLogic", "MFFMTSlicerTest", "MFFMTSlicerWidget"]


class MFFMTSlicer(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MFFMT Breast Ultrasound")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MFFMTSlicer developers"]
        self.parent.helpText = _("""
Finds breast lesions in ultrasound images, segments them and says whether each looks benign or
malignant, with the MFFMT multi-feature fusion multi-task network. Works on a single image, a clip
(a volume of frames) or a sequence; the network runs in a separate process so the application stays
responsive, and a threshold slider redraws the lesion without running it again. The Retrain tab
fine-tunes the model (or trains a new one) on your own annotated data: dataset folders, datalists
or volumes of the scene. <b>Research use only; not for diagnosis.</b>
""")
        self.parent.acknowledgementText = _("""
MFFMT: Wei, Zhang and Xie, "A Novel Deep Learning Model for Breast Tumor Ultrasound Image
Classification with Lesion Region Perception", Current Oncology 2024, 31, 5057-5079,
doi:10.3390/curroncol31090374.<br>
Sample images: BUS-BRA, Gomez-Flores, Gregorio-Calas and Pereira, "BUS-BRA: a breast ultrasound
dataset for assessing computer-aided diagnosis systems", Medical Physics 2024 (licence in
MFFMTCore/samples/BUSBRA_LICENSE.txt).<br>
Models were trained on BUS-BRA and on BUSI: Al-Dhabyani, Gomaa, Khaled and Fahmy, "Dataset of
breast ultrasound images", Data in Brief 28 (2020) 104863, doi:10.1016/j.dib.2019.104863.
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Offer the bundled BUS-BRA sample images in the Sample Data module (none when they are missing)."""
    try:
        from MFFMTCore.resources import sample_images

        images = sample_images()
    except ImportError:
        images = []
    if not images:
        logging.info("MFFMTSlicer: no bundled sample images found; Sample Data lists none")
        return
    import SampleData

    for image in images:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="MFFMT breast ultrasound",
            sampleName=image.stem,
            uris=image.as_uri(),
            fileNames=image.name,
            nodeNames=image.stem,
            thumbnailFileName=str(image),
            checksums=f"SHA256:{hashlib.sha256(image.read_bytes()).hexdigest()}",
        )


class MFFMTSlicerTest(ScriptedLoadableModuleTest):
    """The module's flows inside Slicer on the bundled BUS-BRA samples, one test method a flow, each on
    a fresh scene and independent of the others: sample data, retraining, segmenting a sample,
    redrawing at other thresholds, an ROI, a sequence, a cancelled run and a folder. ``runTest`` (what
    Slicer's Reload and Test calls) runs every flow and reports all that failed, not only the first."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        failed = []
        for name in unittest.TestLoader().getTestCaseNames(type(self)):
            self.setUp()
            self.delayDisplay(name)
            try:
                getattr(self, name)()
            except unittest.SkipTest as reason:
                self.delayDisplay(f"{name} skipped: {reason}")
            except Exception:
                logging.error(f"MFFMTSlicerTest.{name} failed:\n{traceback.format_exc()}")
                failed.append(name)
        if failed:
            raise AssertionError(f"MFFMTSlicerTest: {', '.join(failed)} failed (tracebacks in the log)")
        self.delayDisplay("Test passed")

    # ------------------------------------------------------------------------------------ helpers

    def _logic(self) -> MFFMTSlicerLogic:
        """A logic with a temporary models folder of its own; installs MFFMTCore's packages on first use."""
        logic = MFFMTSlicerLogic(modelsFolder=Path(slicer.util.tempDirectory("MFFMTSlicerTest")))
        if logic.missingRequirements():
            self.delayDisplay("Installing MFFMTCore's Python packages (first use)")
            logic.installRequirements()
        return logic

    def _defaultModel(self, logic: MFFMTSlicerLogic) -> Path:
        model = logic.defaultModelPath()
        self.assertIsNotNone(model, "the extension ships a default model (MFFMTCore/models)")
        return model

    def _samples(self):
        """The bundled samples' datalist and its (image, mask, label) rows."""
        from MFFMTCore.resources import sample_datalist

        datalist = sample_datalist()
        if not datalist.is_file():
            raise unittest.SkipTest(f"{datalist}: the bundled sample images are missing")
        with open(datalist, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return datalist, [(datalist.parent / row["image"], datalist.parent / row["mask"], row["label"]) for row in rows]

    def _sample(self, label: str):
        """The first bundled sample with ``label``: (image, mask, label)."""
        return next(sample for sample in self._samples()[1] if sample[2] == label)

    def _loadSample(self, image: Path, mask: Path):
        volume = slicer.util.loadVolume(str(image), {"singleFile": True})
        labelmap = slicer.util.loadLabelVolume(str(mask), {"singleFile": True})
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} mask")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentation.SetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole(), volume.GetID())
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        slicer.mrmlScene.RemoveNode(labelmap)
        return volume, segmentation

    def _loadImage(self, image: Path | None = None):
        """The volume of a bundled sample image (default: the first malignant one), as Slicer loads a PNG."""
        return slicer.util.loadVolume(str(image or self._sample("malignant")[0]), {"singleFile": True})

    def _lesionSegmentId(self, segmentation) -> str:
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName(SEGMENT_NAME)
        self.assertTrue(segmentId)
        return segmentId

    def _assertSameGeometry(self, segmentation, segmentId, volume):
        """The segment's voxels lie on the volume's voxels: same grid, same position."""
        labelmap = slicer.vtkOrientedImageData()
        segmentation.GetBinaryLabelmapRepresentation(segmentId, labelmap)
        segmentToWorld, volumeToRas = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(segmentToWorld)
        volume.GetIJKToRASMatrix(volumeToRas)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(segmentToWorld.GetElement(row, column), volumeToRas.GetElement(row, column), 4)
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        self.assertEqual(array.shape, slicer.util.arrayFromVolume(volume).shape)
        return array

    # -------------------------------------------------------------------------------------- flows

    def test_sample_data(self):
        import SampleData

        registerSampleData()
        image = self._samples()[1][0][0]
        self.assertIsNotNone(SampleData.SampleDataLogic().sourceForSampleName(image.stem))

    def test_retrain(self):
        logic = self._logic()
        datalist, _ = self._samples()
        defaultModel = logic.defaultModelPath()
        defaultDigest = hashlib.sha256(defaultModel.read_bytes()).hexdigest() if defaultModel else None
        sceneItems = []
        for image, mask, label in (self._sample("benign"), self._sample("malignant")):
            volume, segmentation = self._loadSample(image, mask)
            logic.setTrainingLabel(volume, label)
            sceneItems.append((volume, segmentation, label))
        candidates = {volume.GetID(): (segmentation, label) for volume, segmentation, label in
                      logic.sceneTrainingCandidates()}
        for volume, segmentation, label in sceneItems:
            self.assertEqual(candidates[volume.GetID()], (segmentation, label))
        self.delayDisplay("Retraining one short epoch on the samples and two labelled scene volumes")
        trained = logic.train([datalist], modelName="self test", sceneItems=sceneItems, backbone="resnet18",
                              epochs=1, batch_size=2, val_fraction=0.4, input_size=64, device="cpu")
        self.assertEqual(trained.parent, logic.modelsFolder)
        self.assertEqual(trained.name, "self_test.safetensors")
        entry = logic.modelRegistry().find(trained)
        self.assertIsNotNone(entry)
        self.assertIsNone(entry.error)
        self.assertEqual(entry.backbone, "resnet18")
        if defaultModel:
            self.assertEqual(hashlib.sha256(defaultModel.read_bytes()).hexdigest(), defaultDigest)

    def test_segment_sample(self):
        logic = self._logic()
        volume = self._loadImage()
        segmentation, rows = logic.process(volume, model=self._defaultModel(logic), threshold=0.5, gradcam=True)
        self.assertEqual(len(rows), 1)
        row = rows[0]
        self.assertIn(row["prediction"], ("benign", "malignant"))
        self.assertAlmostEqual(row["p_benign"] + row["p_malignant"], 1.0, 3)
        segmentId = self._lesionSegmentId(segmentation)
        segment = segmentation.GetSegmentation().GetSegment(segmentId)
        tag = vtk.mutable("")
        self.assertTrue(segment.GetTag(segment.GetTerminologyEntryTagName(), tag))
        self.assertEqual(str(tag), LESION_TERMINOLOGY.tag())
        mask = self._assertSameGeometry(segmentation, segmentId, volume)
        self.assertEqual(int((mask != 0).sum()), int(row["lesion_area_px"]))
        self.assertTrue(math.isnan(row["lesion_area_mm2"]))  # a PNG has no physical pixel spacing
        table = segmentation.GetNodeReference("MFFMT.results")
        self.assertEqual(table.GetNumberOfRows(), 1)
        self.assertAlmostEqual(float(slicer.util.arrayFromTableColumn(table, "P(malignant)")[0]), row["p_malignant"], 4)
        points = segmentation.GetNodeReference("MFFMT.lesions")
        self.assertEqual(points.GetNumberOfControlPoints(), 1 if row["lesion_area_px"] > 0 else 0)
        heatmap = segmentation.GetNodeReference("MFFMT.gradcam")
        self.assertEqual(slicer.util.arrayFromVolume(heatmap).shape, slicer.util.arrayFromVolume(volume).shape)

    def test_rethreshold_without_the_network(self):
        logic = self._logic()
        volume = self._loadImage()
        segmentation, (row,) = logic.process(volume, model=self._defaultModel(logic), threshold=0.5)
        strict = logic.updateThreshold(segmentation, 0.9)[0]
        lenient = logic.updateThreshold(segmentation, 0.1)[0]
        self.assertLessEqual(strict["lesion_area_px"], lenient["lesion_area_px"])
        self.assertEqual(lenient["p_malignant"], row["p_malignant"])
        segmentId = self._lesionSegmentId(segmentation)
        self.assertEqual(int((self._assertSameGeometry(segmentation, segmentId, volume) != 0).sum()),
                         int(lenient["lesion_area_px"]))

    def test_region_of_interest(self):
        logic = self._logic()
        volume = self._loadImage()
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        roi.SetCenter([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
        roi.SetSize([(bounds[1] - bounds[0]) / 2, (bounds[3] - bounds[2]) / 2, 10.0])
        width, height, _ = volume.GetImageData().GetDimensions()
        x, y, w, h = logic.roiBox(roi, volume)
        self.assertTrue(0 < x < width and 0 < y < height and 0 < w < width and 0 < h < height)
        self.assertEqual(len(logic.process(volume, model=self._defaultModel(logic), roiNode=roi)[1]), 1)

    def test_sequence(self):
        logic = self._logic()
        model = self._defaultModel(logic)
        volume = self._loadImage()
        _, (row,) = logic.process(volume, model=model, threshold=0.5)
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "two frames")
        sequence.SetDataNodeAtValue(volume, "0")
        sequence.SetDataNodeAtValue(volume, "1")
        clipSegmentation, clipRows = logic.process(sequence, model=model, threshold=0.5)
        self.assertEqual([r["frame"] for r in clipRows], [0, 1])
        self.assertAlmostEqual(clipRows[0]["p_malignant"], clipRows[1]["p_malignant"], 4)
        self.assertAlmostEqual(clipRows[0]["p_malignant"], row["p_malignant"], 3)
        clip = clipSegmentation.GetNodeReference("MFFMT.input")
        self.assertEqual(slicer.util.arrayFromVolume(clip).shape[0], 2)

    def test_cancel(self):
        logic = self._logic()
        task = logic.startProcessing(self._loadImage(), model=self._defaultModel(logic))
        logic.cancel(task)
        self.assertEqual(task.status, "cancelled")
        self.assertFalse(task.workDir.exists())

    def test_process_folder(self):
        logic = self._logic()
        folder = Path(slicer.util.tempDirectory("MFFMTSlicerTestInput"))
        shutil.copy(self._sample("benign")[0], folder)
        output = folder.parent / f"{folder.name}-output"
        rows = logic.processFolder(folder, output, model=self._defaultModel(logic))
        self.assertEqual(len(rows), 1)
        self.assertFalse(rows[0]["error"])
        self.assertTrue((output / "results.csv").is_file())
        self.assertTrue(list(output.glob("*.seg.nrrd")))

    def test_live(self):
        """Live mode on a volume whose image is replaced by sample frames, as OpenIGTLinkIF replaces it:
        results in place, frames dropped while the network is busy, a running class, a recording."""
        logic = self._logic()
        _, samples = self._samples()
        arrays = [slicer.util.arrayFromVolume(self._loadImage(image)) for image, _, _ in samples[:4]]
        height, width = min(array.shape[1] for array in arrays), min(array.shape[2] for array in arrays)
        frames = [array[:, :height, :width].copy() for array in arrays]  # one frame size, as a scanner sends
        self.delayDisplay("Live mode: starting the worker and following a changing image")
        feed = slicer.util.addVolumeFromArray(frames[0] * 0, name="Image_Reference")
        try:
            session = logic.startLive(feed, record=True)
            segmentation = session.segmentationNode
            for frame in frames[:3]:
                slicer.util.updateVolumeFromArray(feed, frame)
                session.wait()
                self.assertIs(session.segmentationNode, segmentation)
                mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, session.segmentId, feed)
                self.assertEqual(int((mask != 0).sum()), int(session.lastRow["lesion_area_px"]))
                self.assertEqual(session.tableNode.GetNumberOfRows(), 1)
            self.assertEqual((session.received, session.processed, session.dropped), (3, 3, 0))
            # Frames faster than the network: the one waiting is replaced, the newest wins.
            slicer.util.updateVolumeFromArray(feed, frames[3])
            session.poll()
            for frame in frames[:3]:
                slicer.util.updateVolumeFromArray(feed, frame)
            session.wait()
            self.assertEqual(session.dropped, 2)
            self.assertEqual(session.lastRow["frame"], session.received)
            self.assertTrue(session.runningSummary())
            logic.stopLive()
            self.assertEqual(session.received, session.processed + session.dropped + session.failed)
            for sequence in session.recordedSequences().values():
                self.assertEqual(sequence.GetNumberOfDataNodes(), session.processed)
        finally:
            logic.stopLive()
            logic.closeWorker()
