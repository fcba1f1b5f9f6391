"""Ingest jobs of the HTTP service: one ingest runs at a time, in a background thread.

``POST /ingest`` starts a job and answers at once; ``GET /jobs/{id}`` shows its status, its
progress (from the ingest's ``ingest_state`` snapshots) and, once done, its report. Jobs live
in the server process only: the last ``keep`` are remembered and a restart forgets them (the
catalog's runs table keeps the history of every ingest). A job still running when the server
stops is marked ``interrupted``.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal

from indexers.ingest.progress import IngestProgress
from pipelines.server.errors import ApiError
from retriever.errors import MmragError

__all__ = ["IngestBusy", "IngestFn", "Job", "JobNotFound", "JobProgress", "JobTable"]

JobStatus = Literal["queued", "running", "done", "failed", "interrupted"]
IngestFn = Callable[[Any], dict[str, Any]]  # ingest with this progress callback -> the report dict
_ACTIVE = ("queued", "running")


class IngestBusy(ApiError):
    """Another ingest job is running: one writer at a time."""

    status = 409


class JobNotFound(ApiError):
    status = 404


@dataclass(frozen=True)
class JobProgress:
    """What a job has done so far: files found, finished and failed, items added."""

    files_seen: int = 0
    files_done: int = 0
    files_failed: int = 0
    items_added: int = 0

    @classmethod
    def of(cls, state: IngestProgress) -> JobProgress:
        return cls(files_seen=state.found, files_done=state.done, files_failed=state.failed,
                   items_added=state.items)


@dataclass(frozen=True)
class Job:
    """A snapshot of one ingest job."""

    id: str
    paths: tuple[str, ...]
    status: JobStatus = "queued"
    started_at: str = field(default_factory=lambda: _now())
    finished_at: str | None = None
    progress: JobProgress = JobProgress()
    report: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None

    def to_dict(self, root: str = "") -> dict[str, Any]:
        """The JSON of the job; ``root`` is the path prefix the app is served under."""
        return {"job": self.id, "status": self.status, "url": f"{root}/jobs/{self.id}", "paths": list(self.paths),
                "started_at": self.started_at, "finished_at": self.finished_at,
                "progress": self.progress.__dict__.copy(), "report": self.report, "error": self.error,
                "error_type": self.error_type}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Reporter:
    """The progress callback of one job: each ingest snapshot updates the job's progress."""

    def __init__(self, table: JobTable, job_id: str) -> None:
        self.table, self.job_id = table, job_id

    def __call__(self, label: str, done: int, total: int) -> None:
        """Per-file calls; ``ingest_state`` carries everything they say."""

    def ingest_state(self, state: IngestProgress) -> None:
        self.table.update(self.job_id, progress=JobProgress.of(state))


class JobTable:
    """The jobs of one app, behind a lock; at most one is queued or running at a time."""

    def __init__(self, keep: int = 50) -> None:
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, paths: list[str], ingest: IngestFn) -> Job:
        """A new job running ``ingest`` in a thread; IngestBusy while another one is active."""
        with self._lock:
            active = next((j for j in self._jobs.values() if j.status in _ACTIVE), None)
            if active is not None:
                raise IngestBusy(f"ingest job {active.id} is {active.status}; one ingest runs at a time, "
                                 f"retry when GET /jobs/{active.id} says it has finished")
            job = Job(id=secrets.token_hex(8), paths=tuple(paths))
            self._jobs[job.id] = job
            self._forget_old()
        thread = threading.Thread(target=self._run, args=(job.id, ingest), name=f"ingest-job-{job.id}",
                                  daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no ingest job {job_id[:80]!r}; GET /jobs lists the recent ones "
                              "(jobs are not kept across server restarts)")
        return job

    def recent(self) -> list[Job]:
        """The remembered jobs, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    def update(self, job_id: str, **changes: Any) -> None:
        """Change a job that is still active (a job marked finished stays as it is)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status in _ACTIVE:
                self._jobs[job_id] = replace(job, **changes)

    def stop(self, wait_s: float = 1.0) -> None:
        """The server is stopping: jobs still active are marked interrupted."""
        for thread in self._threads:
            thread.join(wait_s)
        with self._lock:
            for job_id, job in self._jobs.items():
                if job.status in _ACTIVE:
                    self._jobs[job_id] = replace(job, status="interrupted", finished_at=_now(),
                                                 error="the server stopped before the ingest finished")

    def _run(self, job_id: str, ingest: IngestFn) -> None:
        self.update(job_id, status="running")
        try:
            report = ingest(_Reporter(self, job_id))
        except KeyboardInterrupt:
            self._finish(job_id, "interrupted", error="the ingest was interrupted", error_type="KeyboardInterrupt")
        except MmragError as exc:
            self._finish(job_id, "failed", error=str(exc) or type(exc).__name__, error_type=type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - the job reports every failure; the thread has no caller
            self._finish(job_id, "failed", error=f"internal error ({type(exc).__name__}: {exc})",
                         error_type="InternalError")
        else:
            self._finish(job_id, "done", report=report)

    def _finish(self, job_id: str, status: JobStatus, **changes: Any) -> None:
        self.update(job_id, status=status, finished_at=_now(), **changes)

    def _forget_old(self) -> None:
        """Keep the newest ``keep`` jobs (an active job is never forgotten). Called under the lock."""
        finished = [job_id for job_id, job in self._jobs.items() if job.status not in _ACTIVE]
        for job_id in finished[: max(0, len(self._jobs) - self.keep)]:
            del self._jobs[job_id]
