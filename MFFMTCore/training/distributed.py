"""Multi-process training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m MFFMTCore train ...`` starts N processes and tells each its rank
through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). Without those variables training
runs in one process and every call here is a no-op. Only rank 0 writes files; the other ranks follow
its decisions (stop, best model) through collective operations.
"""

from __future__ import annotations

import datetime as _dt
import os

import torch
import torch.distributed as dist

from MFFMTCore.devices import torch_device
from MFFMTCore.errors import MFFMTError


class DistributedContext:
    """Rank, world size and the process group of this training process.

    Args:
        device: a ``--device`` value (:mod:`MFFMTCore.base.devices`): on ``cpu`` the gloo backend, on
            ``cuda`` nccl with one GPU per local rank; ``mps`` runs in one process only.
    """

    def __init__(self, device: str = "auto") -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch_device(device)
        device = self.device.type
        if device == "mps" and self.enabled:
            raise MFFMTError("--device mps", "trains in one process only; start mffmt train without torchrun")
        if device == "cuda":
            self.device = torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        if self.enabled and not dist.is_initialized():
            # Validation runs on rank 0 only; the others wait at a barrier, so allow a long wait.
            dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=_dt.timedelta(hours=2))

    @property
    def enabled(self) -> bool:
        """True when running as one of several processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and reports progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over the processes (one collective call for all of them)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True on any process (every process gets the same answer)."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
