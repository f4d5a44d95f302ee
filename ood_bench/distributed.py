"""torch.distributed helpers for ``torchrun --nproc_per_node=K oodbench run ...``.

* :func:`context` reads rank and world size from the environment torchrun sets (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the process group (gloo on CPU, nccl on CUDA).
* :func:`shard` gives rank ``r`` the frames ``r, r + K, r + 2K, ...`` of a frame list.
* :meth:`Dist.gather` collects one picklable object per rank (metric ``state_dict``\\ s) on every
  rank, in rank order, so states are *merged* with the metric's own ``merge`` (a binned ROC
  histogram or a list of per-component scores cannot simply be summed).

A single process gets a :class:`Dist` with ``world_size == 1`` whose collectives are no-ops, so
the runner has one code path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ood_bench.errors import OodBenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size``, GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when several processes take part (collectives really communicate)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank arrives (no-op for one process)."""
        if self.active:
            import torch.distributed as torch_dist

            torch_dist.barrier()

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` for one process)."""
        if not self.active:
            return [obj]
        import torch.distributed as torch_dist

        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as torch_dist

        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def check(self, error: BaseException | None) -> None:
        """Raise on every rank if any rank hit ``error`` (so no rank waits forever)."""
        errors = self.gather(None if error is None else f"rank {self.rank}: {error}")
        if error is not None:
            raise error
        failed = [e for e in errors if e is not None]
        if failed:
            raise OodBenchError("another rank failed: " + "; ".join(failed))

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0, then on the other ranks (e.g. to train or fill a cache once).

        An error on rank 0 is re-raised on every rank instead of leaving them at the barrier.
        """
        if not self.active:
            yield
            return
        error: BaseException | None = None
        if self.is_main:
            try:
                yield
            except BaseException as caught:  # noqa: B036  (re-raised below, on every rank)
                error = caught
            self.check(error)
        else:
            self.check(None)
            yield


def context(device: str = "cpu") -> Dist:
    """This process's :class:`Dist`; joins the process group when ``WORLD_SIZE > 1``.

    The backend is nccl for ``device="cuda"`` and gloo otherwise; ``MASTER_ADDR`` and
    ``MASTER_PORT`` come from torchrun.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise OodBenchError(f"RANK={rank} / WORLD_SIZE={world_size} from the environment are "
                            "inconsistent")
    dist = Dist(rank, world_size, local_rank)
    if dist.active:
        import torch
        import torch.distributed as torch_dist

        if not torch_dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            torch_dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return dist


def shutdown(dist: Dist) -> None:
    """Leave the process group joined by :func:`context` (no-op for one process)."""
    if dist.active:
        import torch.distributed as torch_dist

        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise OodBenchError(f"environment variable {name}={value!r} is not an integer") from None


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share: items ``rank, rank + world_size, ...`` (round robin)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise OodBenchError(f"rank {rank} is not in a world of size {world_size}")
    return list(items[rank::world_size])


def device_for(device: str, dist: Dist) -> str:
    """The torch device of this rank: ``cuda`` becomes ``cuda:<local_rank>``."""
    if device == "cuda" and dist.active:
        return f"cuda:{dist.local_rank}"
    return device
