"""The module's warm worker and live mode, run for real on Slicer's core libraries (``slicer-core``).

The module is loaded as Slicer loads it (``slicercore/``); one real ``mffmt serve`` worker with the
shipped default model serves the whole file (the logic's, started once). Live mode is driven the
way OpenIGTLinkIF or a playing sequence drives it: by replacing the image of a volume node with
real sample frames (the bundled BUS-BRA images, resampled to one frame size), and polling the
session as the panel's timer does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "MFFMTCore" / "samples"

pytestmark = pytest.mark.slow
HEIGHT, WIDTH = 240, 320


@pytest.fixture(scope="module")
def env(tmp_path_factory, slicer_core_session):
    """The scene, the slicer module and a logic whose worker is started once for the file."""
    root = tmp_path_factory.mktemp("slicercore-live")
    with slicer_core_session(root) as (scene, slicer, _, logic):
        logic.worker.client()  # warm before the first test, so that timing-dependent steps are deterministic
        yield scene, slicer, logic, root


@pytest.fixture(scope="module")
def frames():
    """The bundled samples as HEIGHT x WIDTH grey frames (one frame size, as a scanner sends them)."""
    result = []
    for path in sorted(SAMPLES.glob("bus_*.png")):
        image = sitk.ReadImage(str(path), sitk.sitkUInt8)
        resampled = sitk.Resample(image, [WIDTH, HEIGHT], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                                  [image.GetSpacing()[0] * image.GetWidth() / WIDTH,
                                   image.GetSpacing()[1] * image.GetHeight() / HEIGHT])
        result.append(sitk.GetArrayFromImage(resampled)[np.newaxis])
    return result


def _feed(slicer, spacing=0.1):
    """A volume as an OpenIGTLink image node: one frame with a physical spacing, updated in place."""
    volume = slicer.util.addVolumeFromArray(np.zeros((1, HEIGHT, WIDTH), np.uint8),
                                            np.diag([-spacing, -spacing, 1.0, 1.0]), "Image_Reference")
    return volume


def _sceneNodeIds(scene) -> set[str]:
    """The scene's nodes, but for the label display nodes that slicer.util's segment reading leaves behind."""
    ids = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}
    return {nodeId for nodeId in ids if not nodeId.startswith("vtkMRMLLabelMapVolumeDisplayNode")}


def _mask(slicer, session):
    return slicer.util.arrayFromSegmentBinaryLabelmap(session.segmentationNode, session.segmentId, session.volumeNode)


def _picture(slicer, png: Path):
    image = sitk.ReadImage(str(png))
    return slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image)[np.newaxis], np.diag([-1.0, -1.0, 1.0, 1.0]),
                                          png.stem)


# ----------------------------------------------------------------------------- the warm worker


def test_apply_reuses_the_worker_and_reloads_on_a_model_switch(env, tmp_path):
    scene, slicer, logic, _ = env
    volume = _picture(slicer, SAMPLES / "bus_0033-l.png")
    pid, starts = logic.worker.pid, logic.worker.starts
    first, firstRows = logic.process(volume, gradcam=True)
    second, secondRows = logic.process(volume, gradcam=True)
    assert logic.worker.pid == pid and logic.worker.starts == starts  # one worker for both runs
    assert first is not second and firstRows[0]["p_malignant"] == secondRows[0]["p_malignant"]
    # Another model file (the default one under another name): the same worker loads it.
    default = Path(logic.worker.client().model["path"])
    other = tmp_path / "other model.safetensors"
    shutil.copy(default, other)
    _, otherRows = logic.process(volume, model=other)
    assert logic.worker.pid == pid and logic.worker.client(other).model["path"] == str(other.resolve())
    assert otherRows[0]["p_malignant"] == pytest.approx(firstRows[0]["p_malignant"], abs=1e-6)
    # A file that is not a model: a one-line error, no node left, and the worker keeps its model.
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\0" * 64)
    before = _sceneNodeIds(scene)
    with pytest.raises(RuntimeError, match="broken.safetensors") as failure:
        logic.process(volume, model=broken)
    assert "\n" not in str(failure.value) and _sceneNodeIds(scene) == before
    assert logic.worker.pid == pid and logic.worker.ready(other) is not None
    logic.process(volume)  # back to the default model
    assert logic.worker.pid == pid and list(logic.workRoot.iterdir()) == []


def test_a_killed_worker_is_restarted_and_a_cancel_keeps_it(env):
    scene, slicer, logic, _ = env
    volume = _picture(slicer, SAMPLES / "bus_0026-s.png")
    killed, starts = logic.worker.pid, logic.worker.starts
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while logic.worker.pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logic.worker.pid is None
    _, rows = logic.process(volume)
    assert rows[0]["prediction"] in ("benign", "malignant")
    assert logic.worker.pid not in (None, killed) and logic.worker.starts == starts + 1
    # Cancel right after the request went: nothing stays, and the same worker serves the next run.
    before, pid = _sceneNodeIds(scene), logic.worker.pid
    completed = []
    task = logic.startProcessing(volume, gradcam=True, completedCallback=completed.append)
    assert task.request is not None  # a warm worker gets the request at once
    logic.cancel(task)
    assert task.status == "cancelled" and completed == [task] and task.request.done()
    assert not task.workDir.exists() and _sceneNodeIds(scene) == before
    logic.process(volume)
    assert logic.worker.pid == pid


# --------------------------------------------------------------------------------- live mode


def test_live_updates_in_place_and_keeps_a_running_finding(env, frames):
    scene, slicer, logic, _ = env
    volume = _feed(slicer)
    session = logic.startLive(volume, threshold=0.5)
    created = _sceneNodeIds(scene)
    segmentation, table = session.segmentationNode, session.tableNode
    rows = []
    for frame in frames:
        slicer.util.updateVolumeFromArray(volume, frame)
        session.wait()
        row = session.lastRow
        rows.append(row)
        # The same nodes, updated: the lesion on the volume's voxels, the table's one row, the label.
        assert _sceneNodeIds(scene) == created
        assert int((_mask(slicer, session) != 0).sum()) == int(row["lesion_area_px"])
        assert table.GetNumberOfRows() == 1
        assert float(slicer.util.arrayFromTableColumn(table, "P(malignant)")[0]) == pytest.approx(row["p_malignant"], abs=1e-4)
        assert segmentation.GetAttribute("MFFMT.liveLabel").startswith(row["prediction"].capitalize())
        assert row["lesion_area_mm2"] == pytest.approx(row["lesion_area_px"] * 0.01, rel=1e-3)
    assert (session.received, session.processed, session.dropped, session.failed) == (len(frames), len(frames), 0, 0)
    assert [row["frame"] for row in rows] == list(range(1, len(frames) + 1))
    # Each frame's result is what the worker gives for that frame alone, and the running finding is
    # the clip finding mffmt predict gives for the frames as one clip (the rule of base.clip_finding).
    client = logic.worker.client()
    clip = client.segment(np.concatenate(frames), spacing=[0.1, 0.1, 1.0], threshold=0.5)
    for row, expected in zip(rows, clip.rows):
        assert row["p_malignant"] == pytest.approx(expected["p_malignant"], abs=1e-4)
        assert row["lesion_area_px"] == expected["lesion_area_px"]
    running = session.finding.finding()
    assert clip.result["clip"]["frames_with_lesion"] > 0
    assert running.prediction == clip.result["clip"]["prediction"]
    assert running.probabilities == pytest.approx(clip.result["clip"]["probabilities"], abs=1e-4)
    assert running.frames_with_lesion == clip.result["clip"]["frames_with_lesion"]
    assert json.loads(segmentation.GetAttribute("MFFMT.liveClip"))["prediction"] == running.prediction
    assert session.runningSummary().startswith(running.prediction)
    logic.stopLive()


def test_live_drops_frames_that_come_faster_than_the_network(env, frames):
    scene, slicer, logic, _ = env
    volume = _feed(slicer)
    session = logic.startLive(volume)
    slicer.util.updateVolumeFromArray(volume, frames[0])
    session.poll()  # frame 1 goes to the worker
    for frame in frames[1:5]:  # four more before it is done: each replaces the one waiting
        slicer.util.updateVolumeFromArray(volume, frame)
    volume.SetName("renamed")  # not a new frame
    assert (session.received, session.dropped) == (5, 3)
    session.wait()
    assert (session.processed, session.dropped, session.failed) == (2, 3, 0)
    assert session.lastRow["frame"] == 5  # the latest frame won
    # A frame the worker refuses (non-finite pixels) is counted, and the next one is served.
    broken = frames[0].astype(np.float32)
    broken[0, 10:20, 10:20] = np.nan
    slicer.util.updateVolumeFromArray(volume, broken)
    session.wait()
    assert session.failed == 1 and "finite" in session.lastError and "\n" not in session.lastError
    slicer.util.updateVolumeFromArray(volume, frames[0])
    session.wait()
    assert session.processed == 3 and session.received == 7
    assert session.failed + session.processed + session.dropped == session.received
    logic.stopLive()


def test_live_recording_and_stop_leave_a_consistent_scene(env, frames):
    scene, slicer, logic, _ = env
    volume = _feed(slicer)
    session = logic.startLive(volume, record=True)
    recorded = session.recordedSequences()
    assert set(recorded) == {"image", "label", "row"}
    masks, pMalignant = [], []
    for frame in frames[:3]:
        slicer.util.updateVolumeFromArray(volume, frame)
        session.wait()
        masks.append(_mask(slicer, session).copy())
        pMalignant.append(session.lastRow["p_malignant"])
    # A frame in flight when Stop comes is dropped; the nodes keep the last processed frame.
    slicer.util.updateVolumeFromArray(volume, frames[3])
    session.poll()
    logic.stopLive()
    assert logic.live is None and not session.running
    assert session.received == session.processed + session.dropped + session.failed == 4
    for sequence in recorded.values():
        assert sequence.GetNumberOfDataNodes() == 3
        assert [sequence.GetNthIndexValue(i) for i in range(3)] == ["1", "2", "3"]
    for index in range(3):
        image = slicer.util.arrayFromVolume(recorded["image"].GetNthDataNode(index))
        np.testing.assert_array_equal(image, frames[index])
        label = slicer.util.arrayFromVolume(recorded["label"].GetNthDataNode(index))
        np.testing.assert_array_equal(label != 0, masks[index] != 0)
        row = recorded["row"].GetNthDataNode(index)
        assert float(slicer.util.arrayFromTableColumn(row, "P(malignant)")[0]) == pytest.approx(pMalignant[index], abs=1e-4)
    browser = session.browserNode
    assert browser.GetMasterSequenceNode() is recorded["image"]
    assert all(browser.IsSynchronizedSequenceNodeID(recorded[key].GetID()) for key in ("label", "row"))
    assert browser.GetProxyNode(recorded["label"]) is not None  # ready for review
    np.testing.assert_array_equal(_mask(slicer, session) != 0, masks[-1] != 0)
    # Stopped means stopped: the feed goes on, nothing changes.
    nodesAfterStop = _sceneNodeIds(scene)
    slicer.util.updateVolumeFromArray(volume, frames[4])
    time.sleep(0.2)
    assert session.poll() is False and session.received == 4 and _sceneNodeIds(scene) == nodesAfterStop
    # A volume removed from the scene ends its session.
    again = logic.startLive(volume)
    scene.RemoveNode(volume)
    again.poll()
    assert not again.running


def test_live_follows_a_sequence_being_played(env, frames):
    scene, slicer, logic, _ = env
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "sweep")
    for index, frame in enumerate(frames[:3]):
        node = slicer.vtkMRMLScalarVolumeNode()
        slicer.util.updateVolumeFromArray(node, frame)
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-0.1, -0.1, 1.0, 1.0])))
        sequence.SetDataNodeAtValue(node, str(index))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "sweep browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    sequences = slicer.modules.sequences.logic()
    sequences.UpdateProxyNodesFromSequences(browser)
    session = logic.startLive(sequence)  # the sequence stands for the volume it plays in
    assert session.volumeNode is browser.GetProxyNode(sequence)
    for item in (1, 2):  # as the browser's play button steps through the frames
        browser.SetSelectedItemNumber(item)
        sequences.UpdateProxyNodesFromSequences(browser)
        session.wait()
        assert session.lastRow["frame"] == item
    assert (session.received, session.processed) == (2, 2)
    logic.stopLive()
    with pytest.raises(ValueError, match="sequence browser"):
        logic.startLive(scene.AddNewNodeByClass("vtkMRMLSequenceNode", "not shown"))
