"""Serving: a long-lived worker for many requests, and live frames over OpenIGTLink.

- :mod:`MFFMTCore.serving.protocol`: the worker's wire format (JSON lines with binary attachments).
- :mod:`MFFMTCore.serving.worker`: ``mffmt serve``, the worker itself (loads torch and a model once).
- :mod:`MFFMTCore.serving.client`: :class:`WorkerClient`, which starts and talks to a worker and
  imports neither torch nor anything else of MFFMTCore that does (3D Slicer uses it).
- :mod:`MFFMTCore.serving.igtl`: an OpenIGTLink connection (pyigtl's messages) that reconnects.
- :mod:`MFFMTCore.serving.live`: ``mffmt live``, segmentation of every frame an OpenIGTLink server sends
  (needs pyigtl: ``pip install "MFFMTCore[live]"``).

This package's ``__init__`` imports nothing, so that the client stays free of torch.
"""
