"""Class labels of MFFMT: the names a dataset, a datalist, a model and the Slicer module use."""

from __future__ import annotations

#: Class indices of the classification head; malignant is the positive class.
LABELS: dict[str, int] = {"benign": 0, "malignant": 1}
#: Every label an image may carry. "normal" images have no lesion and no class index (-1).
LABEL_NAMES: tuple[str, ...] = ("benign", "malignant", "normal")
#: BI-RADS categories of the auxiliary head, in index order (BUS-BRA grades 2 to 5).
BIRADS_CLASSES: list[str] = ["2", "3", "4", "5"]
#: The prediction of a frame the input check finds unlike breast B-mode (instead of a class).
UNSUITABLE = "not breast B-mode"
#: Class names of the classification head, in logit order.
CLASS_NAMES: tuple[str, ...] = tuple(sorted(LABELS, key=LABELS.__getitem__))
