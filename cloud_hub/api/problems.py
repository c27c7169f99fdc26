"""Errors as RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from device_profiles import CommandRejected, format_location

__all__ = [
    "PROBLEM_JSON",
    "TITLES",
    "document_problems",
    "documented_methods",
    "install_problem_handlers",
    "problem",
    "problem_responses",
]

PROBLEM_JSON = "application/problem+json"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    422: "Invalid request",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
#: The JSON schema of an RFC 9457 problem (other members, e.g. ``errors``, may follow).
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}


def problem_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for errors answered as problems; ``descriptions`` by ``s401=...``."""
    return {
        status: {
            "description": descriptions.get(f"s{status}", TITLES[status]),
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


def problem(status: int, title: str, detail: str, **extra: object) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    response = problem(exc.status_code, TITLES.get(exc.status_code, "Error"), str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path only (GET and PUT of
        # one path are two routes): say every method the OpenAPI documents for it
        documented = documented_methods(request.app, request.url.path)
        if documented:
            response.headers["Allow"] = ", ".join(documented)
    return response


def documented_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the app's OpenAPI documents for a request path (none if undocumented)."""
    methods: set[str] = set()
    for template, item in app.openapi().get("paths", {}).items():
        if re.fullmatch(_PARAMETER.sub("[^/]+", re.escape(template)), path):
            methods |= {m.upper() for m in item if m.upper() in _HTTP_METHODS}
    return sorted(methods)


_PARAMETER = re.compile(r"\\\{[^}]*\\\}")
_HTTP_METHODS = {"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"}


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": format_location(list(err["loc"])), "message": err["msg"]}  # steps[2].at
        for err in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(422, "Invalid request", detail, errors=errors)


async def _command_rejected(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CommandRejected)
    return problem(422, "Command rejected", exc.reason)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(CommandRejected, _command_rejected)


def _document(operation: dict[str, Any]) -> None:
    """Add the errors an operation can answer, each as ``application/problem+json``."""
    responses: dict[str, Any] = operation.setdefault("responses", {})
    params = operation.get("parameters", [])
    statuses: set[int] = set()
    if operation.get("security"):
        statuses |= {401, 403}  # the API key dependency
    if any(p.get("in") == "path" for p in params):
        statuses.add(404)  # no such resource
    if "requestBody" in operation:
        statuses |= {400, 413, 422}  # unparsable, too large (BodySizeLimit), invalid
    elif params:
        statuses.add(422)
    for status in statuses:
        responses.setdefault(str(status), {"description": TITLES[status]})
    for code, response in responses.items():
        if code[0] in "45":  # every error of this app is a problem (handlers above)
            response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}


def document_problems(app: FastAPI) -> None:
    """Make the app's OpenAPI say what it does: errors (401/403 of API keys, 404 of path ids,
    400/413/422 of bodies and parameters) are ``application/problem+json``, not FastAPI's
    default ``application/json`` validation error."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    _document(operation)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension
