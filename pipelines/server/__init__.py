"""The document-QA HTTP service (FastAPI): ``create_app(engine)`` and ``run(engine, host, port)``."""

from pipelines.server.app import create_app, run

__all__ = ["create_app", "run"]
