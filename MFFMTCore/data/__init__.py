"""Datasets for MFFMT: readers (BUSI, BUS-BRA, datalists), group-aware splits, MONAI transforms and the
torch Dataset that feeds training and evaluation."""

from MFFMTCore.data.dataset import MFFMTDataset
from MFFMTCore.data.readers import read_busbra, read_busi, read_datalist, read_datalist_sections, read_dataset
from MFFMTCore.data.records import (
    BIRADS_CLASSES,
    CLASS_INDEX,
    DatasetError,
    SampleRecord,
    birads_index,
    label_index,
    record_key,
    summarize,
)
from MFFMTCore.data.samples import lesion_boxes, make_samples
from MFFMTCore.data.splits import busbra_official_folds, group_kfold, split_by_group
from MFFMTCore.data.transforms import build_transforms
from MFFMTCore.preprocessing import preprocess_frame

__all__ = [
    "BIRADS_CLASSES", "CLASS_INDEX", "DatasetError", "MFFMTDataset", "SampleRecord", "birads_index",
    "build_transforms", "busbra_official_folds", "group_kfold", "label_index", "lesion_boxes",
    "make_samples", "preprocess_frame", "read_busbra", "read_busi", "read_datalist", "read_datalist_sections",
    "read_dataset", "record_key", "split_by_group", "summarize",
]
