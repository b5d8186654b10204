"""What the tests share: small model files, the shipped default model, the bundled sample frames, the
real data folder, and a predictor with a known answer on synthetic ultrasound captures.

Import paths are set once in pyproject.toml (``pythonpath`` of ``[tool.pytest.ini_options]``): this
folder, for the helper modules (``dicom_samples``, ``slicercore``) and the synthetic-data writers of
other test files, and ``MFFMTSlicer/``, for the Slicer module's ``MFFMTSlicerLib``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


def write_random_model(path: Path, seed: int = 0, *, half: bool = False, network: dict | None = None,
                       **info) -> Path:
    """A random-weight MFFMT model file: an MFFMT18 with a 64x64 input, named ``seed<seed>``.

    Args:
        path: where to write it.
        seed: torch seed of the weights (two seeds give two different models).
        half: store the weights as float16, as the shipped model is.
        network: other arguments of :class:`MFFMTCore.network.MFFMT` (e.g. ``fusion="sum"``).
        info: other fields of :class:`MFFMTCore.model_file.ModelInfo` (e.g. ``threshold=0.4``).
    """
    import torch

    from MFFMTCore.model_file import ModelInfo, save_model
    from MFFMTCore.network import MFFMT

    torch.manual_seed(seed)
    model = MFFMT(**{"backbone": "resnet18", **(network or {})})
    fields = {"input_size": [64, 64], "name": f"seed{seed}", **info}
    return save_model(path, model, ModelInfo(architecture=model.architecture, **fields), half=half)


@pytest.fixture(scope="session")
def random_model() -> Callable[..., Path]:
    """:func:`write_random_model`, for a test that needs a model file of its own (another seed, other
    metadata)."""
    return write_random_model


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """A small random-weight MFFMT18 model file with a 64x64 input, named ``seed0`` (read-only: a test
    that changes a model file writes a copy)."""
    return write_random_model(tmp_path_factory.mktemp("model") / "mffmt18.safetensors", 0)


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The default model shipped inside MFFMTCore; its absence from a checkout is a failure, not a skip."""
    from MFFMTCore.model_file import default_model_path

    path = default_model_path()
    assert path is not None, "MFFMTCore/models/ holds no default model: the package ships one"
    return path


@pytest.fixture(scope="session")
def sample_frames() -> list[Path]:
    """The bundled BUS-BRA sample images (MFFMTCore/samples/bus_*.png), sorted by name."""
    frames = sorted((REPO / "MFFMTCore" / "samples").glob("bus_*.png"))
    assert len(frames) >= 5, f"{REPO / 'MFFMTCore' / 'samples'}: the bundled sample images are missing"
    return frames


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data, with BUSI and BUS-BRA); the test skips where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def dark_lesion_predictor(model_path):
    """A predictor on :func:`model_path` whose network is :class:`dicom_samples.DarkLesionNet`: a lesion
    where the capture is dark, malignant with p ~ 0.73."""
    from dicom_samples import DarkLesionNet

    from MFFMTCore.inference import Predictor

    predictor = Predictor(model_path)
    predictor.model = DarkLesionNet()
    return predictor


def _check_dev_extra(distribution: str) -> None:
    """Fail where the dev extras would install ``distribution`` on this platform and it is missing;
    skip where they would not (its environment marker leaves this platform out)."""
    requirements = [Requirement(line) for line in importlib.metadata.requires("MFFMTCore") or []]
    wanted = [r for r in requirements if r.name == distribution and r.marker and "extra" in str(r.marker)]
    assert wanted, f"{distribution} is not one of MFFMTCore's dev extras (pyproject.toml)"
    if not wanted[0].marker.evaluate({"extra": "dev"}):
        pytest.skip(f"the dev extras do not install {distribution} here ({wanted[0].marker})")
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{distribution} is not installed, though the dev extras install it here: "
                    "pip install -e '.[dev]'", pytrace=False)


@pytest.fixture(scope="session")
def dev_extra() -> Callable[[str], None]:
    """Check that a package of the dev extras is installed: a test whose other side is such a package
    fails loudly without it (CI installs the dev extras) rather than skipping."""
    return _check_dev_extra


@contextlib.contextmanager
def _slicer_core_session(root: Path) -> Iterator[tuple]:
    import slicercore

    scene = slicercore.start(root / "tmp")
    import slicer

    import MFFMTSlicer

    logic = MFFMTSlicer.MFFMTSlicerLogic(modelsFolder=root / "models", workRoot=root / "work")
    try:
        yield scene, slicer, MFFMTSlicer, logic
    finally:
        logic.stopLive()
        logic.closeWorker()


@pytest.fixture(scope="session")
def slicer_core_session(dev_extra) -> Callable[[Path], contextlib.AbstractContextManager[tuple]]:
    """``with slicer_core_session(root) as (scene, slicer, MFFMTSlicer, logic):`` Slicer's core libraries
    with the module loaded as Slicer loads it (``slicercore/``) and a logic whose models and work
    folders are under ``root``; its worker and live session end with the block."""
    dev_extra("slicer-core")
    return _slicer_core_session
