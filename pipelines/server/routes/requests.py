"""What the routes share about requests: the URL root the app is served under, and request types
that are built per app."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request

__all__ = ["root_path", "with_request_types"]

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def root_path(request: Request) -> str:
    """The path prefix the app is served under (``""`` at the root), for the URLs it hands out."""
    return str(request.scope.get("root_path", ""))


def with_request_types(endpoint: Endpoint, **types: Any) -> Endpoint:
    """``endpoint`` with the annotations of the named parameters replaced by ``types``, for FastAPI.

    An app's request types carry its ``ServerLimits`` and are built with the app; the endpoint's
    own annotations state their static shape, which the code relies on. FastAPI reads the
    signature, so validation and the OpenAPI schema carry the app's limits.
    """
    signature = inspect.signature(endpoint)
    unknown = sorted(set(types) - set(signature.parameters))
    if unknown:
        raise TypeError(f"{endpoint.__name__} has no parameter {', '.join(unknown)}; "
                        f"expected some of {', '.join(signature.parameters)}")
    parameters = [p.replace(annotation=types.get(p.name, p.annotation)) for p in signature.parameters.values()]
    # inspect.signature (which FastAPI calls) returns __signature__ when a function has one; setattr because
    # the Callable type does not declare the attribute
    setattr(endpoint, "__signature__", signature.replace(parameters=parameters))  # noqa: B010
    return endpoint
