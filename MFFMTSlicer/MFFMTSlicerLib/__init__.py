"""Helpers of the MFFMTSlicer module.

Two kinds of modules live here:

- Slicer-free helpers, importable and tested in any Python (no ``slicer``, ``vtk``, ``qt`` or ``ctk``):
  ``commands`` (the worker's ``predict`` request and the ``mffmt train`` command line),
  ``dependencies`` (first-use checks), ``models`` (the models folder), ``process`` (background
  processes), ``progress`` (predict and train progress), ``results`` (results to table rows),
  ``scene_data`` (scene volumes to a training datalist), ``tasks`` (work running in the background:
  poll, wait, cancel), ``worker`` (the warm ``mffmt serve`` worker) and ``volumes`` (arrays to NRRD
  files). What they share with MFFMTCore (geometry, results columns,
  terminology, labels, model metadata, requirements) comes from :mod:`MFFMTCore.base`, which needs
  no torch.
- Slicer-only modules, prefixed ``slicer_``: ``slicer_nodes`` (MRML nodes), ``slicer_requirements``,
  ``slicer_models``, ``slicer_prediction``, ``slicer_live`` and ``slicer_training`` (the logic, by
  concern), ``slicer_logic`` (the module's logic and parameter node), ``slicer_presenter`` (the
  panel's decisions, without Qt) and ``slicer_widget`` (the panel: Qt bound to the presenter).

Importing this package puts the folder holding MFFMTCore on ``sys.path``: next to the module when
the extension is installed, one folder up in a source checkout.
"""

import sys
from pathlib import Path


def _addCoreToPath() -> None:
    moduleDir = Path(__file__).resolve().parent.parent
    for folder in (moduleDir, moduleDir.parent):
        if any((folder / "MFFMTCore" / name).is_file() for name in ("__init__.py", "__init__.pyc")):
            if str(folder) not in sys.path:
                sys.path.append(str(folder))
            return


_addCoreToPath()
