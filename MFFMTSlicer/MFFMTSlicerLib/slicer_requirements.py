"""The logic's first-use set-up: which Python packages MFFMTCore lacks here, and installing them. Slicer only."""

import importlib
import logging
from collections.abc import Sequence

import slicer

from MFFMTSlicerLib.dependencies import RequirementStatus, check_requirements, missing_requirements


class RequirementsLogic:
    """Checks and installs the packages of :data:`MFFMTCore.base.requirements.REQUIREMENTS`."""

    @staticmethod
    def missingRequirements() -> list[RequirementStatus]:
        """The Python packages MFFMTCore needs that Slicer's Python lacks (or has too old)."""
        return missing_requirements(check_requirements())

    def requireRequirements(self) -> None:
        """Raise RuntimeError naming the missing packages, if any."""
        missing = self.missingRequirements()
        if missing:
            raise RuntimeError("MFFMT needs Python packages that are not installed: "
                               + ", ".join(status.describe() for status in missing)
                               + ". Install them from the module panel or with logic.installRequirements().")

    def installRequirements(self, statuses: Sequence[RequirementStatus] | None = None) -> None:
        """Install missing packages: torch with the PyTorch extension, the rest with pip.

        Ask the user before calling this: it downloads several hundred megabytes.

        Raises:
            RuntimeError: a package Slicer ships itself is missing, or an installation failed.
        """
        statuses = self.missingRequirements() if statuses is None else list(statuses)
        bundled = [status.describe() for status in statuses if status.requirement.installer == "bundled"]
        if bundled:
            raise RuntimeError(f"Slicer's own Python lacks {', '.join(bundled)}; install a current Slicer (5.10 or newer)")
        for status in statuses:
            if status.requirement.installer != "pytorch":
                continue
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                logging.warning("PyTorch extension not found: installing torch with pip (CPU or default CUDA build)")
                slicer.util.pip_install([str(status.requirement)])
                continue
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=status.requirement.specifier)
            if torch is None:
                raise RuntimeError("PyTorch could not be installed (see the Python console)")
        others = [str(status.requirement) for status in statuses if status.requirement.installer == "pip"]
        if others:
            slicer.util.pip_install(others)
        importlib.invalidate_caches()  # let this process find what was just installed
        still = self.missingRequirements()
        if still:
            raise RuntimeError("still missing after installation: " + ", ".join(s.describe() for s in still))
