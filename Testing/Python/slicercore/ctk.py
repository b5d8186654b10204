"""Stand-in for Slicer's ``ctk`` module in slicer-core tests: importable, and nothing else (see qt.py)."""
