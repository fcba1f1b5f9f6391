"""The README's code runs as written: its Python blocks on the sample corpus (tiny CLIP, offline
models; the LangChain block's OpenAI chat model replaced by a fake that records its prompt), and
its command lines name commands, options and ``--llm`` backends that exist."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


def _command_lines() -> list[str]:
    """Every ``mmrag ...`` command of the bash blocks, also those chained after ``&&``."""
    lines = (part.strip() for block in _blocks("bash") for line in block.splitlines()
             for part in line.split("&&"))
    return [line for line in lines if line.startswith("mmrag ")]


@pytest.fixture()
def in_sample_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_clip_spec: str) -> Path:
    """A working directory like the repository's after ``mmrag demo``: ``data/`` with its pictures."""
    from pipelines.cli.demo import make_shapes

    shutil.copytree(REPO / "data", tmp_path / "data", ignore=shutil.ignore_patterns("shapes"))
    make_shapes(tmp_path / "data" / "shapes")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMRAG_CLIP_MODEL", tiny_clip_spec)  # as the README says to do offline
    monkeypatch.delenv("MMRAG_STORE", raising=False)
    return tmp_path


def _fake_openai(monkeypatch: pytest.MonkeyPatch) -> type:
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    class FakeChatOpenAI(FakeListChatModel):
        """Takes ``ChatOpenAI``'s arguments, answers without a network and keeps the prompts it got."""

        model: str = ""
        responses: list = ["Ask what you can do for your country [1]."]
        prompts: ClassVar[list[str]] = []

        def _call(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> str:
            FakeChatOpenAI.prompts.append("\n".join(m.text for m in messages))
            return super()._call(messages, stop, run_manager, **kwargs)

    monkeypatch.setattr(langchain_openai, "ChatOpenAI", FakeChatOpenAI)
    return FakeChatOpenAI


def test_python_blocks_run_on_the_sample_corpus(
    in_sample_corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api, chain = _blocks("python")
    fake = _fake_openai(monkeypatch)

    namespace: dict[str, Any] = {}
    exec(compile(api, "README.md (Python API)", "exec"), namespace)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "18 []"  # added, failed
    assert out[1].startswith("shapes/red_circle.png image")
    answer = next(line for line in out if "Olympus Mons" in line)
    assert answer.endswith("['notes/solar_system.md']")
    assert "Not found in the indexed data." in out

    namespace = {}
    try:
        exec(compile(chain, "README.md (LangChain)", "exec"), namespace)
    finally:
        if "engine" in namespace:
            namespace["engine"].close()
    assert capsys.readouterr().out.strip() == "Ask what you can do for your country [1]."
    prompt = fake.prompts[-1]
    assert "Question: What did Kennedy ask his fellow Americans?" in prompt
    assert "[1] audio/jfk.flac @ 00:00–00:11\nAnd so, my fellow Americans" in prompt


def test_command_lines_use_real_commands_and_options() -> None:
    from pipelines.cli.main import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    lines = _command_lines()
    named = {line.split()[1] for line in lines}
    assert named >= {"ingest", "search", "ask", "remove", "stats", "serve", "demo"}
    for line in lines:
        parser = commands[line.split()[1]]
        options = {s for a in parser._actions for s in a.option_strings}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line):
            assert flag in options, (line, flag)


def test_llm_backends_in_readme_and_help_exist() -> None:
    from pipelines.cli.main import build_parser
    from pipelines.rag.llms import parse_spec

    ask_line = next(line for line in _command_lines() if line.startswith("mmrag ask"))
    specs = re.search(r"--llm ([^\]]+)\]", ask_line).group(1).split(" | ")
    assert "llamacpp" in specs
    for spec in specs:
        parse_spec(spec.strip())  # raises for an unknown backend
    ask = next(a for a in build_parser()._actions if a.dest == "command").choices["ask"]
    llm_help = next(a.help for a in ask._actions if a.dest == "llm")
    assert all(kind in llm_help for kind in ("extractive", "openai:", "ollama:", "llamacpp"))


def test_cpu_install_is_documented_beside_the_default() -> None:
    setup = README[README.index("## Set up on a fresh machine"):README.index("## The offline demo")]
    cpu = "pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in setup and setup.index(cpu) < setup.rindex("pip install -e '.[all]'")
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"torch==2.14.1"' in pyproject and '"torchvision==0.29.1"' in pyproject  # the pins it repeats
