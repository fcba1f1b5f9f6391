"""``POST /ingest`` starts an ingest job (only paths under the directories the app allows; ingest is
off without any); ``GET /jobs`` and ``GET /jobs/{job_id}`` follow the jobs (``pipelines.server.jobs``)."""

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from pipelines.engine import Engine
from pipelines.server.errors import IngestForbidden, IngestPathMissing
from pipelines.server.jobs import JobTable
from pipelines.server.limits import shown
from pipelines.server.models import IngestRequest, JobBody, JobListBody, RequestModels, responses
from pipelines.server.routes.requests import root_path, with_request_types

__all__ = ["ingest_router"]


def ingest_router(engine: Engine, allowed: list[Path], models: RequestModels, jobs: JobTable) -> APIRouter:
    router = APIRouter()

    def ingest(request: Request, body: IngestRequest) -> dict[str, Any]:
        if not allowed:
            raise IngestForbidden("ingest over HTTP is disabled; start the server with "
                                  "`mmrag serve --allow-ingest DIR` to allow ingesting files under DIR")
        paths = [_ingest_path(raw, allowed) for raw in body.paths]
        prune = body.prune
        job = jobs.start(paths, lambda progress: engine.ingest(paths, prune=prune, progress=progress,
                                                               within=allowed).to_dict())
        return job.to_dict(root_path(request))

    def list_jobs(request: Request) -> dict[str, Any]:
        return {"jobs": [job.to_dict(root_path(request)) for job in jobs.recent()]}

    def get_job(request: Request, job_id: str) -> dict[str, Any]:
        return jobs.get(job_id).to_dict(root_path(request))

    router.post("/ingest", status_code=202, response_model=JobBody,
                responses=responses(400, 403, 409, 413, 422, 503))(with_request_types(ingest, body=models.ingest))
    router.get("/jobs", response_model=JobListBody, responses=responses())(list_jobs)
    router.get("/jobs/{job_id}", response_model=JobBody, responses=responses(404))(get_job)
    return router


def _ingest_path(raw: str, allowed: list[Path]) -> str:
    """The resolved path when it lies under an allowed directory; IngestForbidden otherwise.

    The message quotes only what the client sent: never a resolved path or a symlink's target.
    """
    if "\x00" in raw:
        raise IngestForbidden(f"ingest path {shown(raw)} is not a usable path (it has a NUL character)")
    path = Path(raw)
    if not path.is_absolute():
        raise IngestForbidden(f"ingest path {shown(raw)} is relative; expected an absolute path inside the "
                              "allowed directories")
    resolved = path.resolve()  # follows symlinks and '..': the check is on where the path really leads
    if not any(resolved == a or resolved.is_relative_to(a) for a in allowed):
        raise IngestForbidden(f"ingest path {shown(raw)} is outside the allowed directories")
    if not os.path.lexists(resolved):
        raise IngestPathMissing(f"ingest path {shown(raw)} does not exist")
    return str(resolved)
