"""The benchmarks (bench/) say what to install, in one line, when MFFMTCore or a dev extra is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
# What each benchmark needs beyond Python's standard library (the check itself lives in bench/needs.py).
NEEDS = {
    "bench_imaging_region.py": ["MFFMTCore"],
    "bench_inference.py": ["MFFMTCore", "onnx", "onnxruntime"],
    "bench_input_checks.py": ["MFFMTCore"],
    "bench_live.py": ["MFFMTCore", "pyigtl"],
    "bench_network.py": ["MFFMTCore"],
    "bench_overlay.py": ["MFFMTCore"],
    "bench_predict.py": ["MFFMTCore"],
    "bench_slicer_apply.py": ["MFFMTCore", "slicer_core"],
}


def test_every_benchmark_is_listed():
    assert sorted(path.name for path in BENCH.glob("bench_*.py")) == sorted(NEEDS)


@pytest.mark.parametrize(("script", "module"), [(script, module) for script, modules in NEEDS.items() for module in modules])
def test_a_missing_package_is_named_with_the_install_command(script, module):
    # The script run as `python bench/<script>` in an interpreter where importing `module` fails.
    code = f"""
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError("blocked " + name, name=name)
sys.meta_path.insert(0, Block())
sys.argv = [{str(BENCH / script)!r}]
sys.path.insert(0, {str(BENCH)!r})
runpy.run_path(sys.argv[0], run_name="__main__")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"{script}: install {module}: pip install -e '.[dev]'\n"
