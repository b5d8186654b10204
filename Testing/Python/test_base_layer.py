"""MFFMTCore.base: the torch-free layer that MFFMTCore and the Slicer module share, and the layering
of MFFMTCore's packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "MFFMTCore"
BASE_MODULES = sorted(f"MFFMTCore.base.{path.stem}" for path in (CORE / "base").glob("*.py") if path.stem != "__init__")
SLICER_FREE = ("commands", "dependencies", "models", "process", "progress", "results", "scene_data", "volumes")


def _blocked_import(modules: list[str], blocked: set[str], path: list[str]) -> subprocess.CompletedProcess:
    """Import ``modules`` in a fresh interpreter in which importing ``blocked`` packages fails."""
    code = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
sys.path[:0] = {path!r}
for module in {modules!r}:
    importlib.import_module(module)
print(sorted(name for name in sys.modules if name.split(".")[0] in {blocked!r}))
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)


def test_base_layer_imports_with_torch_and_monai_blocked():
    assert len(BASE_MODULES) >= 9, BASE_MODULES
    result = _blocked_import(BASE_MODULES, {"torch", "monai", "torchvision", "safetensors"}, [str(REPO)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_slicer_helpers_import_with_torch_monai_and_slicer_blocked():
    blocked = {"torch", "monai", "torchvision", "safetensors", "slicer", "vtk", "vtkmodules", "qt", "ctk"}
    modules = [f"MFFMTSlicerLib.{name}" for name in SLICER_FREE]
    result = _blocked_import(modules, blocked, [str(REPO / "MFFMTSlicer")])  # MFFMTSlicerLib finds MFFMTCore
    assert result.returncode == 0, result.stderr


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _package_imports(package: str) -> dict[str, set[str]]:
    return {path.name: {name for name in _imports(path) if name.startswith("MFFMTCore.")}
            for path in (CORE / package).glob("*.py")}


def test_lower_layers_never_import_higher_ones():
    # base < data < network < training / evaluation / inference < commands
    higher = {
        "base": ("MFFMTCore.data", "MFFMTCore.network", "MFFMTCore.training", "MFFMTCore.evaluation",
                 "MFFMTCore.inference", "MFFMTCore.commands", "MFFMTCore.model_file", "MFFMTCore.losses"),
        "data": ("MFFMTCore.network", "MFFMTCore.training", "MFFMTCore.evaluation", "MFFMTCore.inference",
                 "MFFMTCore.commands"),
        # training and evaluation are one level: evaluation must not import training (no cycle).
        "evaluation": ("MFFMTCore.training", "MFFMTCore.inference", "MFFMTCore.commands"),
        "training": ("MFFMTCore.inference", "MFFMTCore.commands"),
        "inference": ("MFFMTCore.training", "MFFMTCore.evaluation", "MFFMTCore.commands"),
    }
    wrong = {f"{package}/{file}": sorted(name for name in names if name.startswith(higher[package]))
             for package in higher for file, names in _package_imports(package).items()}
    assert {key: value for key, value in wrong.items() if value} == {}
    # Completing a trained model scores files as predict does: above training/evaluation/inference.
    completion = {name for name in _imports(CORE / "model_completion.py") if name.startswith("MFFMTCore.")}
    assert not {name for name in completion if name.startswith(("MFFMTCore.commands", "MFFMTCore.serving",
                                                                 "MFFMTCore.training"))}


def test_one_results_schema_for_mffmt_predict_and_the_slicer_module():
    from MFFMTSlicerLib import results

    from MFFMTCore.base.results_schema import RESULT_COLUMNS, column_types, result_columns

    assert result_columns() == ["input", "frame", "p_benign", "p_malignant", "prediction", "lesion_present",
                                "p_lesion", "lesion_area_mm2", "lesion_area_px", "components", "centroid_x", "centroid_y", "centroid_z",
                                "long_axis_mm", "perpendicular_axis_mm", "long_axis_px", "perpendicular_axis_px",
                                "orientation", "input_flagged", "input_score", "input_reason", "error"]
    assert result_columns(["a", "b", "c"])[2:5] == ["p_a", "p_b", "p_c"]
    assert results.FIELD_TYPES == column_types()
    assert len({name for name, _ in RESULT_COLUMNS}) == len(RESULT_COLUMNS)
