"""What a fine-tuning run (``mffmt train --init-model MODEL``) takes from the model it starts from.

A model is only right for the inputs it was made for, so a fine-tuning run inherits from its parent
(read from the model file's header, no torch):

- its **input size** and its **architecture** (backbone, fusion, attention, decoder, token widths);
  the intensity normalisation is the parent's by construction (``minmax`` is the only one);
- its **recipe**: augmentation, optimiser, weight decay, batch size, gradient clipping and loss
  weights, as its ``training.recipe`` records them;

and the **fine-tuning defaults** (:data:`FINE_TUNE_DEFAULTS`) replace the from-scratch preset's
epochs, learning rate and warm-up. Anything given in a config file or on the command line still
wins. Chosen by measurement (README, "Fine-tuning on your own data"): few epochs at a tenth of the
from-scratch learning rate, the backbone frozen for the first epoch so that the heads adapt to the
site before its few hundred frames move the features, the best epoch chosen by validation loss
(validation AUC on a site's 30-odd lesion frames moves by 0.2 from one epoch to the next: it is
noise) and training stopped when that loss has not improved for 3 epochs.
"""

from __future__ import annotations

from typing import Any

#: The defaults of a fine-tuning run (options of :mod:`MFFMTCore.base.train_options`).
FINE_TUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 6,
    "lr": 2e-4,
    "warmup_epochs": 0.5,
    "schedule": "cosine",
    "freeze_epochs": 1,
    "patience": 3,
    "select": "loss",
}
#: Options taken from the parent's architecture (``architecture`` of its metadata).
ARCHITECTURE_OPTIONS = ("backbone", "fusion", "use_ca", "use_cbam", "decoder", "embed_dim", "mlp_ratio")
#: Options taken from the parent's recipe (``training.recipe`` of its metadata) when it records them.
RECIPE_OPTIONS = ("augment", "optimizer", "weight_decay", "batch_size", "grad_clip", "lambda_loc", "seg_weight",
                  "aux_weight", "label_smoothing", "precision")


def inherited_options(info: dict[str, Any]) -> dict[str, Any]:
    """The option values a run fine-tuning the model with metadata ``info`` starts from.

    Args:
        info: the parent's metadata (:func:`MFFMTCore.base.model_metadata.read_model_metadata`).

    Returns:
        Option name -> value: the parent's input size, architecture and recipe, then the fine-tuning
        defaults. Values the parent does not record are left out (the preset gives them).
    """
    values: dict[str, Any] = {}
    size = info.get("input_size")
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        values["input_size"] = int(size[0])
    architecture = info.get("architecture") or {}
    values.update({name: architecture[name] for name in ARCHITECTURE_OPTIONS if name in architecture})
    recipe = (info.get("training") or {}).get("recipe") or {}
    values.update({name: recipe[name] for name in RECIPE_OPTIONS if recipe.get(name) is not None})
    values.update(FINE_TUNE_DEFAULTS)
    return values
