"""Nothing heavy in Slicer's process: opening the module and listing models import no torch.

Run in a fresh interpreter (this one has torch loaded by other tests) on Slicer's core libraries,
with torch installed in it, as Slicer's Python is after the first-use install.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "monai", "safetensors", "MFFMTCore.model_file", "MFFMTCore.network", "MFFMTCore.inference")

pytestmark = pytest.mark.slow


def test_opening_the_module_and_listing_models_imports_no_torch(tmp_path, dev_extra, default_model):
    dev_extra("slicer-core")
    assert importlib.util.find_spec("torch") is not None, "the check needs torch installed in this Python"
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(default_model, models / "mine.safetensors")
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO / "Testing" / "Python")!r})
import slicercore
slicercore.start({str(tmp_path / "tmp")!r})
import MFFMTSlicer  # the module file, as Slicer loads it
from MFFMTSlicerLib.slicer_presenter import MFFMTSlicerPresenter

class View:  # the panel, without Qt
    def render(self, state): self.state = state
    def confirm(self, text, title): return False
    def showError(self, text): raise AssertionError(text)
    def showVolume(self, node, fit): pass
    def showPlot(self, node): pass

logic = MFFMTSlicer.MFFMTSlicerLogic(modelsFolder={str(models)!r}, workRoot={str(tmp_path / "work")!r})
view = View()
presenter = MFFMTSlicerPresenter(logic, view)
presenter.enter()  # opening the module: parameter node, model list, the worker started in the background
entries = logic.models()
found = logic.modelRegistry().find(entries[-1].path)
worker = presenter.warmUp.result(timeout=300)  # the network's imports happen there, in the worker's process
heavy = sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r} or name in {HEAVY!r})
print(json.dumps({{"heavy": heavy, "models": [choice.title for choice in view.state.models],
                   "found": str(found.path), "worker": worker.pid}}))
logic.closeWorker()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["models"][0].startswith("Default model") and report["models"][1].startswith("mine (resnet18")
    assert report["found"] == str(models / "mine.safetensors") and report["worker"] > 0
