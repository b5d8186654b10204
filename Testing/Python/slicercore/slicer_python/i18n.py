"""Stand-in for ``slicer.i18n`` (Slicer's Base/Python/slicer/i18n.py) in slicer-core tests: no translations."""


def tr(text):
    return text


def translate(context, text):
    return text
