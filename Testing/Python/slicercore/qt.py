"""Stand-in for Slicer's ``qt`` module in slicer-core tests: importable, and nothing else.

slicer-core has no Qt. The module's Qt objects are made lazily (widgets, dialogs, timers,
settings), so only ``import qt`` at the top of the widget's and Slicer's files has to succeed; any
Qt object actually used raises AttributeError, which shows a Qt dependency of the logic at once.
"""
