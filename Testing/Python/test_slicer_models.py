"""The models folder of the Slicer module (MFFMTSlicerLib.models) with real MFFMT model files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from MFFMTSlicerLib import models

from MFFMTCore.base.model_metadata import read_safetensors_metadata


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, random_model) -> Path:
    """A real MFFMT model file written by MFFMTCore (a small MFFMT18 with sum fusion), half precision and
    with training and validation metadata, as the shipped model is."""
    return random_model(tmp_path_factory.mktemp("models") / "tiny.safetensors", half=True,
                        network={"fusion": "sum", "decoder_channels": 16}, name="tiny", threshold=0.4,
                        training={"epochs": 1, "data": ["samples.csv"]}, validation={"auc": 0.8125, "dice": 0.5})


def _write_safetensors(path: Path, metadata: dict[str, str] | None) -> Path:
    header = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")
    return path


def test_metadata_through_mffmtcore_and_from_the_header_agree(model_file):
    import dataclasses

    from MFFMTCore.model_file import read_model_info

    through_core = dataclasses.asdict(read_model_info(model_file))
    from_header = models.read_model_metadata(model_file)
    assert through_core == from_header
    assert from_header["name"] == "tiny" and from_header["threshold"] == 0.4
    assert from_header["architecture"]["backbone"] == "resnet18" and from_header["validation"]["auc"] == 0.8125
    assert from_header["software"]["MFFMTCore"]  # filled in by save_model


def test_header_reader_refuses_files_that_are_not_mffmt_models(tmp_path):
    with pytest.raises(ValueError, match="not an MFFMT model file"):
        models.read_model_metadata(_write_safetensors(tmp_path / "other.safetensors", {"format": "pt"}))
    with pytest.raises(ValueError, match="not an MFFMT model file"):
        models.read_model_metadata(_write_safetensors(tmp_path / "bare.safetensors", None))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="garbage.safetensors.*impossible"):
        models.read_model_metadata(garbage)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="too short"):
        models.read_model_metadata(short)
    with pytest.raises(ValueError, match="not found"):
        models.read_model_metadata(tmp_path / "missing.safetensors")
    bad_json = tmp_path / "bad.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(ValueError, match="header is not JSON"):
        read_safetensors_metadata(bad_json)


def test_registry_lists_the_default_first_then_the_folder_by_name(tmp_path, model_file):
    folder = tmp_path / "models"
    registry = models.ModelRegistry(folder, default_model=model_file)
    assert [e.path for e in registry.entries()] == [model_file]  # the folder does not exist yet
    second = registry.add(model_file, "Zeta model")
    first = registry.add(model_file, "alpha")
    _write_safetensors(folder / "broken.safetensors", {"format": "something-else"})
    entries = registry.entries()
    assert [e.path.name for e in entries] == ["tiny.safetensors", "alpha.safetensors", "broken.safetensors",
                                              "Zeta_model.safetensors"]
    assert entries[0].is_default and not any(e.is_default for e in entries[1:])
    assert entries[2].error and "not an MFFMT model file" in entries[2].error
    assert registry.find(first).path == first and registry.find(second).path == second
    assert registry.find(tmp_path / "nowhere.safetensors") is None
    # A default model inside the folder is listed once.
    assert [e.path for e in models.ModelRegistry(folder, default_model=first).entries()].count(first) == 1


def test_entry_title_and_description_show_what_a_user_chooses_by(tmp_path, model_file):
    registry = models.ModelRegistry(tmp_path / "models", default_model=model_file)
    entry = registry.entries()[0]
    assert entry.title() == "Default model (tiny) (resnet18, val AUC 0.812, uncalibrated)"  # no temperature
    assert entry.backbone == "resnet18" and entry.threshold == 0.4
    description = entry.description()
    assert str(model_file) in description and "Backbone: resnet18" in description and "auc=0.8125" in description
    assert "Calibration: uncalibrated: no temperature" in description
    broken = models.ModelEntry(tmp_path / "x.safetensors", {}, error="x.safetensors: damaged")
    assert broken.title() == "x (unusable)" and "damaged" in broken.description()


def test_add_copies_atomically_and_never_overwrites(tmp_path, model_file):
    from MFFMTCore.model_file import load_model

    folder = tmp_path / "models"
    registry = models.ModelRegistry(folder)
    original = model_file.read_bytes()
    first = registry.add(model_file, "fine tuned")
    again = registry.add(model_file, "fine tuned")
    third = registry.add(model_file)
    assert (first.name, again.name, third.name) == ("fine_tuned.safetensors", "fine_tuned-2.safetensors",
                                                    "tiny.safetensors")
    assert first.read_bytes() == again.read_bytes() == original == model_file.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["fine_tuned-2.safetensors", "fine_tuned.safetensors",
                                                        "tiny.safetensors"]  # no temporary file left
    network, info = load_model(again)  # the copy passes the checksum and loads
    assert info.name == "tiny" and network.architecture["fusion"] == "sum"


def test_add_refuses_a_file_that_is_not_a_model_and_leaves_no_trace(tmp_path):
    folder = tmp_path / "models"
    registry = models.ModelRegistry(folder)
    other = _write_safetensors(tmp_path / "weights.safetensors", {"format": "pt"})
    with pytest.raises(ValueError, match="weights.safetensors"):
        registry.add(other, "weights")
    assert not folder.exists() or not list(folder.iterdir())


@pytest.mark.parametrize("name, stem", [("my model (v2)", "my_model_v2"), ("../../etc/passwd", "etc_passwd"),
                                        ("best.safetensors", "best"), ("  ", "model"), ("Ünïcode", "n_code")])
def test_safe_model_filename(name, stem):
    assert models.safe_model_filename(name) == stem
