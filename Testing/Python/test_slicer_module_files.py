"""Checks of the Slicer module's files that need no Slicer: Python compiles, the Qt Designer file
parses and has every widget the code uses, CMake lists every file, and the extension descriptions
(CMakeLists.txt, MFFMTSlicer.s4ext, MFFMTSlicer.json) are complete and agree."""

from __future__ import annotations

import ast
import json
import py_compile
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MFFMTSlicer"
UI_FILE = MODULE / "Resources" / "UI" / "MFFMTSlicer.ui"
PYTHON_FILES = sorted(MODULE.rglob("*.py"))
SLICER_ONLY = {"slicer", "qt", "ctk", "vtk", "SampleData", "PyTorchUtils"}
# Python modules of Slicer's own build; node classes come from ``slicer`` (they moved between these
# libraries: since Slicer 5.10 vtkMRMLMarkupsROINode is in MRML Core, not in the Markups module).
SLICER_LIBRARY_MODULES = {"MRMLCorePython", "vtkSlicerMarkupsModuleMRMLPython", "vtkSlicerSegmentationsModuleMRMLPython",
                          "vtkSlicerSequencesModuleMRMLPython", "vtkSegmentationCorePython"}


def _ui_widgets() -> dict[str, ElementTree.Element]:
    return {widget.get("name"): widget for widget in ElementTree.parse(UI_FILE).getroot().iter("widget")}


def _string_property(widget: ElementTree.Element, name: str) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop.findtext("string")
    return None


def _cmake_list(text: str, variable: str) -> list[str]:
    body = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert body, f"{variable} is not set"
    return [item.replace("${MODULE_NAME}", "MFFMTSlicer") for item in body.group(1).split()]


def _parameter_fields() -> dict[str, ast.expr]:
    tree = ast.parse((MODULE / "MFFMTSlicerLib" / "slicer_logic.py").read_text())
    wrapper = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "MFFMTSlicerParameterNode")
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in wrapper.decorator_list)
    return {stmt.target.id: stmt.annotation for stmt in wrapper.body if isinstance(stmt, ast.AnnAssign)}


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: str(p.relative_to(MODULE)))
def test_every_module_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "compiled.pyc"), doraise=True)


def test_slicer_free_modules_import_nothing_from_slicer():
    for path in sorted((MODULE / "MFFMTSlicerLib").glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        assert not imported & SLICER_LIBRARY_MODULES, f"{path.name}: import node classes from slicer"
        if path.stem.startswith("slicer_"):
            continue
        assert not imported & SLICER_ONLY, f"{path.name} imports {imported & SLICER_ONLY}: prefix it slicer_"
    init = ast.parse((MODULE / "MFFMTSlicerLib" / "__init__.py").read_text())
    imports = [node for node in ast.walk(init) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert {alias.name for node in imports for alias in node.names} <= {"sys", "Path"}


def test_ui_file_is_valid_designer_xml():
    root = ElementTree.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.findtext("class") == "MFFMTSlicer"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "MFFMTSlicer"
    widgets = _ui_widgets()
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    tabs = [w.find("attribute/string").text for w in widgets["tabWidget"].findall("widget")]
    assert tabs == ["Segment && classify", "Retrain"]
    declared = {custom.findtext("class") for custom in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared
    for connection in root.iter("connection"):
        assert connection.findtext("sender") in widgets and connection.findtext("receiver") in widgets


def test_every_widget_the_code_uses_exists_in_the_ui():
    widgets = _ui_widgets()
    used: dict[str, str] = {}
    for path in PYTHON_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            is_ui = (isinstance(owner, ast.Attribute) and owner.attr == "ui" and isinstance(owner.value, ast.Name)
                     and owner.value.id == "self") or (isinstance(owner, ast.Name) and owner.id == "ui")
            if is_ui:
                used[node.attr] = path.name
    assert used, "the widget uses no ui.<name>: the check found nothing to check"
    missing = {name: where for name, where in used.items() if name not in widgets}
    assert not missing, f"widgets used by the code but missing in {UI_FILE.name}: {missing}"


def test_parameter_names_in_the_ui_match_the_parameter_node():
    fields = _parameter_fields()
    bound = {name: widget.get("class") for name, widget in _ui_widgets().items()
             if _string_property(widget, "SlicerParameterName")}
    parameters = {_string_property(_ui_widgets()[name], "SlicerParameterName"): cls for name, cls in bound.items()}
    assert set(parameters) <= set(fields), f"unknown parameters: {set(parameters) - set(fields)}"
    # The widget kinds that parameterNodeWrapper can bind to each type.
    expected = {"inputNode": "qMRMLNodeComboBox", "roiNode": "qMRMLNodeComboBox", "threshold": "ctkSliderWidget",
                "gradcam": "QCheckBox", "device": "QComboBox", "useSceneData": "QCheckBox", "backbone": "QComboBox",
                "startFrom": "QComboBox", "epochs": "QSpinBox", "lr": "QDoubleSpinBox",
                "lambdaLoc": "QDoubleSpinBox", "batchSize": "QSpinBox", "valFraction": "QDoubleSpinBox",
                "modelName": "QLineEdit"}
    assert parameters == expected
    for name in ("device", "backbone", "startFrom"):  # a QComboBox needs a Choice to fill it
        assert "Choice" in ast.dump(fields[name])


def test_cmake_lists_every_module_file_and_nothing_else():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    on_disk = {str(p.relative_to(MODULE)) for p in PYTHON_FILES}
    assert set(scripts) == on_disk
    resource_files = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert set(resources) == resource_files
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.S)
    # MFFMTCore (code, default model, samples) is installed next to the module.
    assert "../MFFMTCore" in text and "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/MFFMTCore" in text
    for pattern in ("*.py", "models/*", "samples/*"):
        assert "${MFFMTCORE_SOURCE_DIR}/" + pattern in text


def test_module_file_defines_what_slicer_looks_up():
    tree = ast.parse((MODULE / "MFFMTSlicer.py").read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    imported = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    for name in ("MFFMTSlicer", "MFFMTSlicerWidget", "MFFMTSlicerLogic", "MFFMTSlicerTest"):
        assert name in defined | imported, name
    bases = {node.name: [ast.unparse(b) for b in node.bases] for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert bases["MFFMTSlicer"] == ["ScriptedLoadableModule"]
    assert bases["MFFMTSlicerTest"] == ["ScriptedLoadableModuleTest"]
    for file, name, expected in (("slicer_widget.py", "MFFMTSlicerWidget",
                                  ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]),
                                 ("slicer_logic.py", "MFFMTSlicerLogic", ["ScriptedLoadableModuleLogic", "RequirementsLogic",
                                                                          "ModelsLogic", "PredictionLogic", "TrainingLogic",
                                                                          "LiveLogic"])):
        lib = ast.parse((MODULE / "MFFMTSlicerLib" / file).read_text())
        cls = next(n for n in lib.body if isinstance(n, ast.ClassDef) and n.name == name)
        assert [ast.unparse(b) for b in cls.bases] == expected


def test_icon_is_a_128_pixel_png():
    with Image.open(MODULE / "Resources" / "Icons" / "MFFMTSlicer.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
        colours = np.unique(np.asarray(icon.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 100  # a picture, not a flat square


def _extension_variables() -> dict[str, str]:
    text = (REPO / "CMakeLists.txt").read_text()
    return dict(re.findall(r'set\((EXTENSION_[A-Z_]+) "([^"]*)"\)', text))


def test_top_level_cmake_follows_the_extension_conventions():
    text = (REPO / "CMakeLists.txt").read_text()
    variables = _extension_variables()
    for name in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "DEPENDS"):
        assert variables.get(f"EXTENSION_{name}"), f"EXTENSION_{name} missing"
    assert variables["EXTENSION_CATEGORY"] == "Segmentation" and variables["EXTENSION_DEPENDS"] == "PyTorch"
    order = ["project(MFFMTSlicer)", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
             "add_subdirectory(MFFMTSlicer)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
             "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(step) for step in order]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)


def _s4ext() -> dict[str, str]:
    entries = {}
    for line in (REPO / "MFFMTSlicer.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            entries[key] = value.strip()
    return entries


def test_s4ext_is_complete_and_agrees_with_cmake():
    entries = _s4ext()
    for key in ("scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "status", "description", "enabled"):
        assert entries.get(key), f"{key} missing"
    variables = _extension_variables()
    assert entries["scm"] == "git" and entries["scmrevision"] == "main" and entries["enabled"] == "1"
    assert entries["depends"] == variables["EXTENSION_DEPENDS"]
    assert entries["category"] == variables["EXTENSION_CATEGORY"]
    assert entries["homepage"] == variables["EXTENSION_HOMEPAGE"]
    assert entries["iconurl"] == variables["EXTENSION_ICONURL"]
    assert entries["iconurl"].endswith("MFFMTSlicer/Resources/Icons/MFFMTSlicer.png")


def test_every_url_into_this_repository_names_a_file_that_exists():
    prefix = "https://raw.githubusercontent.com/MFFMTSlicer/MFFMTSlicer/main/"
    texts = [(REPO / name).read_text() for name in ("CMakeLists.txt", "MFFMTSlicer.s4ext", "MFFMTSlicer.json")]
    urls = {url for text in texts for url in re.findall(re.escape(prefix) + r"[^\s\"';]+", text)}
    assert urls, "no URL into the repository found: the check checks nothing"
    missing = [url for url in urls if not (REPO / url[len(prefix):]).is_file()]
    assert not missing, f"URLs of files that do not exist: {missing}"


def test_catalog_entry_fits_the_extensions_index_schema():
    entry = json.loads((REPO / "MFFMTSlicer.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}  # schema v1.0.1, additionalProperties false
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert "slicer-extension-catalog-entry-schema-v1.0.1.json" in entry["$schema"]
    s4ext = _s4ext()
    assert entry["category"] == s4ext["category"] and entry["scm_url"] == s4ext["scmurl"]
    assert entry["build_dependencies"] == s4ext["depends"].split() and entry["scm_revision"] == s4ext["scmrevision"]
    assert entry.get("tier", 5) in (1, 3, 5)
