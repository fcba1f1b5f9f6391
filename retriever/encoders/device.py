"""Where and in which precision models run.

``auto`` picks CUDA with fp16 when torch sees a GPU; otherwise the CPU, in bf16 when
the CPU has native bf16 matrix instructions (AMX or AVX512-BF16, read from
``/proc/cpuinfo``), else fp32. ``models.device`` / ``models.precision`` override.
Queries (one text or image) have their own precision (``models.query_precision``, default
the same) and torch threads (``models.query_threads``, default 1; see ``query_threads``).
Nothing here runs at import; torch is imported on first call.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from retriever.config.env import torch_threads
from retriever.errors import ConfigError

if TYPE_CHECKING:
    from retriever.config import ModelsConfig

__all__ = [
    "ModelCopies",
    "DevicePlan",
    "configure_threads",
    "cpu_count",
    "cpu_supports_bf16",
    "query_plan",
    "query_threads",
    "resolve_device",
]

_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
_threads_lock = threading.Lock()
_threads_set: int | None = None
_query_lock = threading.Lock()
_query_users = 0
_query_saved: int | None = None


@dataclass(frozen=True)
class DevicePlan:
    """A resolved device (``cpu``, ``cuda``, ``cuda:N``) and precision (fp32|bf16|fp16)."""

    device: str
    precision: str

    @property
    def dtype(self) -> Any:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def cpu_supports_bf16(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> bool:
    """True when the CPU flags include ``amx_bf16`` or ``avx512_bf16``."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and _BF16_FLAGS & set(line.partition(":")[2].split()):
            return True
    return False


def resolve_device(models_cfg: ModelsConfig, cpuinfo: str = "/proc/cpuinfo") -> DevicePlan:
    """Turn ``models.device`` / ``models.precision`` into a concrete DevicePlan.

    ``ModelsConfig`` has checked the values; what is left depends on the machine: whether
    torch sees a GPU, and whether the CPU does bf16 natively.
    """
    import torch

    device, precision = models_cfg.device, models_cfg.precision
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if device.startswith("cuda") and not has_cuda:
        raise ConfigError(
            f"models.device is {device!r} but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
            "use models.device = 'cpu' or 'auto'"
        )
    if device.startswith("cuda"):
        return DevicePlan(device, "fp16" if precision == "auto" else precision)
    if precision == "fp16":
        raise ConfigError("models.precision 'fp16' needs a CUDA device; on the CPU use 'bf16' or 'fp32'")
    if precision == "auto":
        precision = "bf16" if cpu_supports_bf16(cpuinfo) else "fp32"
    return DevicePlan("cpu", precision)


def query_plan(models_cfg: ModelsConfig, batch: DevicePlan | None = None) -> DevicePlan:
    """The plan for encoding one query: ``batch`` (or ``resolve_device``) with ``models.query_precision``.

    On a 2-core AMD EPYC with AVX512-BF16 (no AMX) bf16 was faster than fp32 for one query too
    (p50 on one thread: CLIP text 18 vs 28 ms, CLIP image 77 vs 247 ms, MiniLM 8 vs 19 ms;
    docs/tuning.md), so "auto" keeps the batch precision.
    """
    batch = batch or resolve_device(models_cfg)
    wanted = models_cfg.query_precision
    if wanted == "auto" or wanted == batch.precision:
        return batch
    if wanted == "fp16" and not batch.is_cuda:
        raise ConfigError("models.query_precision 'fp16' needs a CUDA device; on the CPU use 'bf16' or 'fp32'")
    return replace(batch, precision=wanted)


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def configure_threads() -> int:
    """Set torch's intra-op threads once, on first model load.

    ``MMRAG_THREADS`` wins; an explicit ``OMP_NUM_THREADS`` is respected; otherwise
    one thread per available core. Returns the thread count in effect.
    """
    global _threads_set
    with _threads_lock:
        if _threads_set is not None:
            return _threads_set
        import torch

        wanted = torch_threads()
        if wanted is not None:
            torch.set_num_threads(wanted)
        elif not os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(cpu_count())
        _threads_set = torch.get_num_threads()
        return _threads_set


@contextlib.contextmanager
def query_threads(models_cfg: ModelsConfig) -> Iterator[int]:
    """Run one query's encoding on ``models.query_threads`` torch threads (0: one per core).

    Intra-op threads barely help a batch of one, and when the cores are busy (other queries, an
    ingest, other processes) their spinning, descheduled workers make the query far slower: on
    2 cores with 2 busy processes beside it, bf16 CLIP text queries took 101 ms p50 / 127 ms p95
    on one thread and 887 / 2,611 ms on two, MiniLM 51 / 83 vs 228 / 592 ms (docs/tuning.md).
    Reference-counted, so overlapping queries in threads restore the previous count only when
    the last one ends. Yields the thread count in effect.
    """
    global _query_users, _query_saved
    import torch

    wanted = models_cfg.query_threads or cpu_count()
    with _query_lock:
        if _query_users == 0:
            current = torch.get_num_threads()
            _query_saved = current if current != wanted else None
            if _query_saved is not None:
                torch.set_num_threads(wanted)
        _query_users += 1
    try:
        yield torch.get_num_threads()
    finally:
        with _query_lock:
            _query_users -= 1
            if _query_users == 0 and _query_saved is not None:
                torch.set_num_threads(_query_saved)
                _query_saved = None


_M = TypeVar("_M")


class ModelCopies(Generic[_M]):
    """The loaded copies of one model, one per precision: the batch plan's and the query plan's
    (``models.query_precision``), each loaded by ``load(plan)`` on first use."""

    def __init__(self, models_cfg: ModelsConfig, load: Callable[[DevicePlan], _M]) -> None:
        self._cfg, self._load = models_cfg, load
        self._lock = threading.Lock()
        self.plans: dict[bool, DevicePlan] = {}
        self.states: dict[str, _M] = {}  # by precision
        self.first: _M | None = None  # the first one loaded (its tokenizer, transform and size serve all)

    def get(self, query: bool = False) -> _M:
        """The copy for batches, or for one query."""
        plan = self.plans.get(query)
        state = self.states.get(plan.precision) if plan is not None else None
        if state is not None:
            return state
        with self._lock:
            if query not in self.plans:
                batch = self.plans.get(False) or resolve_device(self._cfg)
                self.plans[False] = batch
                self.plans[True] = query_plan(self._cfg, batch)
            plan = self.plans[query]
            if plan.precision not in self.states:
                self.states[plan.precision] = self._load(plan)
                self.first = self.first or self.states[plan.precision]
            return self.states[plan.precision]
