"""Run a model over a labelled dataset and collect one row of results per sample.

Used by validation during training and by ``mffmt evaluate``. Dice is measured at the network's
input size, on the masks the dataset resizes with a mask-safe mode; a sample without a mask, or with
only a box, gets no Dice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from MFFMTCore.base.components import largest_component_px
from MFFMTCore.evaluation.metrics import dice_score


def _as_list(value: Any, size: int) -> list:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * size


@torch.no_grad()
def predict_rows(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    device: torch.device | str = "cpu",
    threshold: float = 0.5,
    loss_fn: torch.nn.Module | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Predict every batch and compare with its labels.

    Args:
        model: an MFFMT network; it is put in eval mode here.
        batches: collated dataset items (``image``, ``mask``, ``has_mask``, ``mask_is_box``, ``label``,
            ``id``, ``dataset``, ``scanner``, optional ``aux``).
        device: where the model runs.
        threshold: lesion probability threshold of the predicted mask.
        loss_fn: when given, the mean loss over the batches is returned too.
        should_stop: polled between batches; when it returns True the rows so far are returned.

    Returns:
        (rows, mean loss or nan). Each row has ``id``, ``dataset``, ``scanner``, ``label`` (-1/0/1),
        ``p_malignant``, ``dice`` (None without a full mask), ``truth_empty``, ``prediction_empty``,
        ``truth_px``, ``prediction_px`` (lesion pixels at the network size), ``logit`` (malignant minus
        benign logit, for calibration), ``p_lesion`` (highest lesion probability of the map),
        ``largest_px`` (pixels of the largest predicted component) and, per auxiliary head,
        ``<name>_label`` and ``<name>_prediction``.
    """
    model.eval()
    rows: list[dict[str, Any]] = []
    loss_sum, loss_batches = 0.0, 0
    for batch in batches:
        if should_stop is not None and should_stop():
            break
        images = batch["image"].to(device)
        output = model(images)
        if loss_fn is not None:
            loss_sum += float(loss_fn(output, batch).total)
            loss_batches += 1
        class_logits = output.class_logits.float()
        p_malignant = torch.softmax(class_logits, dim=1)[:, 1].cpu().tolist()
        logit = (class_logits[:, 1] - class_logits[:, 0]).cpu().tolist()
        probability = torch.sigmoid(output.mask_logits.float())
        p_lesion = probability.flatten(1).amax(dim=1).cpu().tolist()
        predicted = (probability >= threshold).cpu().numpy()[:, 0]
        truth = (batch["mask"] > 0.5).cpu().numpy()[:, 0]
        size = len(p_malignant)
        usable = [bool(has) and not bool(box) for has, box in
                  zip(_as_list(batch["has_mask"], size), _as_list(batch["mask_is_box"], size))]
        aux = {name: (torch.argmax(logits, dim=1).cpu().tolist(), _as_list(batch["aux"][name], size))
               for name, logits in output.aux_logits.items() if name in batch.get("aux", {})}
        for index, (sample_id, dataset, scanner, label) in enumerate(
            zip(_as_list(batch["id"], size), _as_list(batch["dataset"], size), _as_list(batch["scanner"], size),
                _as_list(batch["label"], size))
        ):
            row = {
                "id": sample_id, "dataset": dataset, "scanner": scanner, "label": int(label),
                "p_malignant": p_malignant[index],
                "dice": dice_score(predicted[index], truth[index]) if usable[index] else None,
                "truth_empty": bool(usable[index] and not truth[index].any()),
                "prediction_empty": not predicted[index].any(),
                "truth_px": int(truth[index].sum()) if usable[index] else None,
                "prediction_px": int(predicted[index].sum()),
                "logit": logit[index], "p_lesion": p_lesion[index],
                "largest_px": largest_component_px(predicted[index]),
            }
            for name, (predictions, labels) in aux.items():
                row[f"{name}_label"] = int(labels[index])
                row[f"{name}_prediction"] = int(predictions[index])
            rows.append(row)
    return rows, (loss_sum / loss_batches if loss_batches else math.nan)
