"""Class labels of MFFMT: the names a dataset, a datalist, a model and the Slicer module use."""

from __future__ import annotations

#: Index of each class in the classification head's logits; malignant is the positive class.
CLASS_INDEX: dict[str, int] = {"benign": 0, "malignant": 1}
#: Every label an image may carry (also BUSI's folder names). "normal" images have no lesion and no
#: class index (-1).
IMAGE_LABELS: tuple[str, ...] = ("benign", "malignant", "normal")
#: BI-RADS categories of the auxiliary head, in index order (BUS-BRA grades 2 to 5).
BIRADS_CLASSES: list[str] = ["2", "3", "4", "5"]
#: The prediction of a frame the input check finds unlike breast B-mode (instead of a class).
UNSUITABLE = "not breast B-mode"
#: Class names of the classification head, in logit order.
CLASS_NAMES: tuple[str, ...] = tuple(sorted(CLASS_INDEX, key=CLASS_INDEX.__getitem__))
