"""Dependencies point one way (pipelines -> indexers -> retriever); LangChain stays in pipelines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_importing_the_packages_loads_no_model_library() -> None:
    code = (
        "import sys, retriever, indexers, pipelines, retriever.config, retriever.types, pipelines.cli.main;"
        "heavy = [m for m in ('torch', 'open_clip', 'sentence_transformers', 'faster_whisper') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
