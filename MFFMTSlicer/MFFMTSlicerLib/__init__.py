"""Helpers of the MFFMTSlicer module.

Two kinds of modules live here:

- Slicer-free helpers, importable and tested in any Python (no ``slicer``, ``vtk``, ``qt`` or ``ctk``):
  ``commands`` (the ``mffmt`` command lines), ``dependencies`` (first-use checks), ``geometry``
  (RAS/LPS, ROI boxes), ``models`` (the models folder), ``process`` (background processes),
  ``progress`` (predict and train progress), ``results`` (results to table rows), ``scene_data``
  (scene volumes to a training datalist), ``terminology`` and ``volumes`` (arrays to NRRD files).
- Slicer-only modules, prefixed ``slicer_``, imported only inside Slicer: ``slicer_nodes``,
  ``slicer_logic`` and ``slicer_widget``.

This file imports none of them, so ``import MFFMTSlicerLib`` costs nothing.
"""
