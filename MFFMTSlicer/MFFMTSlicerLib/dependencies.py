"""First use: which Python packages MFFMTCore needs and which of them Slicer's Python lacks.

The list holds the ``dependencies`` of the project's pyproject.toml with the same version ranges,
and every other package MFFMTCore imports at run time (tests keep both true). How each one is
installed differs: torch through the PyTorch extension (it picks the build for the
machine's GPU), packages Slicer ships itself (SimpleITK, numpy, pydicom) never (pip must not
replace Slicer's own builds), the rest with pip. Nothing here installs anything: the module asks
the user first.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    """One package MFFMTCore needs.

    Args:
        name: distribution name (as pip knows it).
        specifier: version range, e.g. ">=2.2,<3".
        module: name to import.
        installer: "pytorch" (PyTorch extension), "pip", or "bundled" (ships with Slicer).
    """

    name: str
    specifier: str
    module: str
    installer: str = "pip"

    def __str__(self) -> str:
        return f"{self.name}{self.specifier}"


REQUIREMENTS = (
    Requirement("torch", ">=2.2,<3", "torch", "pytorch"),
    Requirement("monai", ">=1.6,<2", "monai"),
    Requirement("SimpleITK", ">=2.3", "SimpleITK", "bundled"),
    Requirement("numpy", ">=1.24", "numpy", "bundled"),
    Requirement("safetensors", ">=0.4", "safetensors"),
    Requirement("tqdm", ">=4.60", "tqdm"),
    Requirement("matplotlib", ">=3.7", "matplotlib"),
    Requirement("pillow", ">=10.1", "PIL"),
    Requirement("pydicom", ">=3.0,<4", "pydicom", "bundled"),
    Requirement("pylibjpeg", ">=2.0,<3", "pylibjpeg"),
    Requirement("pylibjpeg-libjpeg", ">=2.1,<3", "libjpeg"),
    Requirement("pylibjpeg-openjpeg", ">=2.3,<3", "openjpeg"),
    Requirement("highdicom", ">=0.28,<1", "highdicom"),
    Requirement("scipy", ">=1.10", "scipy"),
    Requirement("slicerio", ">=1.1", "slicerio"),
)


@dataclass
class RequirementStatus:
    """Whether one requirement is met: ``installed`` is the version found (None: not installed)."""

    requirement: Requirement
    installed: str | None
    ok: bool

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.requirement} (not installed)"
        if not self.ok:
            return f"{self.requirement} (found {self.installed})"
        return f"{self.requirement.name} {self.installed}"


def _version_in(version: str, specifier: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        parsed = Version(version)
    except InvalidVersion:
        return True  # an unusual local build: trust it rather than reinstall over it
    # A local suffix such as "+cpu" or "+cu121" does not change the release.
    return SpecifierSet(specifier).contains(Version(parsed.public), prereleases=True)


def check_requirements(
    requirements: Iterable[Requirement] = REQUIREMENTS,
    version_of: Callable[[str], str] = importlib.metadata.version,
    importable: Callable[[str], bool] = lambda module: importlib.util.find_spec(module) is not None,
) -> list[RequirementStatus]:
    """The status of each requirement in this Python.

    Args:
        requirements: what to check.
        version_of: installed version of a distribution (raises PackageNotFoundError when absent).
        importable: whether a module can be imported (for packages installed without metadata,
            as Slicer's own builds can be); their version is taken as fitting.
    """
    statuses = []
    for requirement in requirements:
        try:
            version = version_of(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            found = importable(requirement.module)
            statuses.append(RequirementStatus(requirement, "unknown version" if found else None, found))
            continue
        statuses.append(RequirementStatus(requirement, version, _version_in(version, requirement.specifier)))
    return statuses


def missing_requirements(statuses: Iterable[RequirementStatus]) -> list[RequirementStatus]:
    """The statuses of requirements that are not met."""
    return [status for status in statuses if not status.ok]
