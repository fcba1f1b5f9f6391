"""The OpenAPI schema tells the truth: a bounded, deterministic schemathesis run against /openapi.json.

Every operation is called in-process (ASGI) with the coverage phase's edge cases plus 20
fuzzed examples, and every response is checked: no server error, a documented status,
a documented media type and a body that matches its documented schema; a request the
schema allows is not refused as malformed, one it forbids is refused.

``POST /ingest`` runs with ingest off (every valid request is a 403; nothing is written), so
``GET /jobs`` lists no job and ``GET /jobs/{job_id}`` is a 404.
For ``POST /search/image`` and ``POST /search/audio`` the check that valid requests are accepted is
off: the schema can say "a file", not "a decodable image" or "a clip with speech", so a random
upload is rightly a 400.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import schemathesis
from schemathesis.engine import events

from pipelines.engine import Engine
from pipelines.server.app import create_app
from pipelines.synthetic import generate

DATA = Path(__file__).resolve().parents[2] / "data"
MAX_EXAMPLES = 20
# 410 is this API's "not found" for what existed: an item removed or a source changed since the link was made
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "410", "429", "5xx"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_clip_spec: str, tiny_clip_encoder, text_encoder):
    docs = tmp_path_factory.mktemp("schema") / "docs"
    docs.mkdir()
    shutil.copy(DATA / "notes" / "bicycle_maintenance.md", docs / "bicycle_maintenance.md")
    for sample in generate(10, seed=7, size=96, balanced=True)[::5]:
        sample.image.save(docs / f"{sample.colour}_{sample.shape}.png")
    eng = Engine.open(docs.parent / "store", overrides={"models.clip": tiny_clip_spec},
                      clip=tiny_clip_encoder, text=text_encoder)
    report = eng.ingest([docs])
    assert report.failed == [] and report.added == 3, report.to_dict()
    yield eng
    eng.close()


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": 20240611,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
        "operations": [{"include-path": path, "checks": {"positive_data_acceptance": {"enabled": False}}}
                       for path in ("/search/image", "/search/audio")],
    })


def _run(schema) -> tuple[list[str], list[str], dict[str, int]]:
    """(check failures, errors, cases per operation) of one schemathesis run over ``schema``."""
    failures: list[str] = []
    errors: list[str] = []
    cases: dict[str, int] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            cases[recorder.label] = cases.get(recorder.label, 0) + len(recorder.cases)
            failures += [f"{recorder.label}: {check.name}: {check.failure_info.failure.title}: "
                         f"{check.failure_info.failure.message}\n{check.failure_info.code_sample}"
                         for checks in recorder.checks.values() for check in checks if check.failure_info]
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            errors.append(repr(event.exception))
    return failures, errors, cases


def test_the_server_conforms_to_its_schema(engine: Engine) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(engine), config=_config())
    failures, errors, cases = _run(schema)
    assert not errors, "\n".join(errors)
    assert not failures, f"{len(failures)} failure(s):\n" + "\n\n".join(failures)
    operations = {"GET /healthz", "GET /readyz", "GET /stats", "GET /search", "POST /search", "POST /search/image",
                  "POST /search/audio", "POST /ask", "POST /ask/stream", "GET /items/{item_id}/open",
                  "GET /items/{item_id}/thumbnail", "POST /links", "POST /ingest", "GET /jobs",
                  "GET /jobs/{job_id}"}
    assert set(cases) == operations and all(n >= 1 for n in cases.values()), cases


def test_every_route_with_a_body_documents_the_body_errors(engine: Engine) -> None:
    """Any request body can be unparseable (400), over its limit (413) or the wrong shape (422):
    the middleware and the parser answer these before the route runs, so every such route says so."""
    paths = create_app(engine).openapi()["paths"]
    bodied = {f"{method.upper()} {path}": set(op["responses"])
              for path, ops in paths.items() for method, op in ops.items() if "requestBody" in op}
    assert "POST /links" in bodied and "POST /ask" in bodied, sorted(bodied)
    missing = {op: sorted({"400", "413", "422"} - codes) for op, codes in bodied.items()
               if not {"400", "413", "422"} <= codes}
    assert not missing, missing
