"""First use: which of the Python packages MFFMTCore needs (:mod:`MFFMTCore.base.requirements`)
Slicer's Python lacks or has too old. Nothing here installs anything: the module asks the user first.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from MFFMTCore.base.requirements import REQUIREMENTS, Requirement


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


def _met(requirement: str, version_of: Callable[[str], str]) -> bool:
    """Whether ``requirement`` ("name" and a version range) is installed here."""
    from packaging.requirements import Requirement as Specified

    specified = Specified(requirement)
    try:
        return _version_in(version_of(specified.name), str(specified.specifier))
    except importlib.metadata.PackageNotFoundError:
        return False


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
        if requirement.only_with is not None and not _met(requirement.only_with, version_of):
            statuses.append(RequirementStatus(requirement, f"not used without {requirement.only_with}", True))
            continue
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
