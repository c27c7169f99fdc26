"""Schemathesis hooks for ``test_api_schemathesis.py``: the CLI loads them by their module
name (``SCHEMATHESIS_HOOKS``).

Two checks replace Schemathesis' own data checks where the OpenAPI cannot say more than it
does; each exception is stated here, narrowly:

- ``hub_negative_data_rejection``: a repeated scalar query parameter (``?a=1&a=2``) takes its
  last value, as FastAPI and most servers do.
- ``hub_positive_data_acceptance``: a 422 for what a well-formed request *means* is no schema
  gap: a command, its parameters or a selector that the devices' profiles refuse
  (``Command rejected``), a cursor the hub did not issue, rows of a bulk CSV (a schema types
  the text, not its rows).

And a safety: a webhook URL that the hub would accept is pointed at the discard port on
loopback, so that no event is ever POSTed to a fuzzed host.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import schemathesis
from pydantic import AnyHttpUrl, TypeAdapter, ValidationError
from schemathesis import checks as sc

_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)
#: A file to name each of our checks in once it has run (the test reads it).
_RAN = os.environ.get("HUB_CHECKS_RAN")
_ran: set[str] = set()


def _record(name: str) -> None:
    if _RAN and name not in _ran:
        _ran.add(name)
        with Path(_RAN).open("a") as file:
            file.write(name + "\n")


LOOPBACK_HOOK = "http://127.0.0.1:9/hook"


@schemathesis.hook
def before_call(context: Any, case: schemathesis.Case[Any], kwargs: dict[str, Any]) -> None:
    if case.operation.path != "/api/v1/webhooks" or not isinstance(case.body, dict):
        return
    url = case.body.get("url")
    if isinstance(url, str):
        try:
            _URL.validate_python(url)
        except ValidationError:
            return  # refused by the hub: never stored, never called
        case.body = {**case.body, "url": LOOPBACK_HOOK}


@schemathesis.check
def hub_negative_data_rejection(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    _record("hub_negative_data_rejection")
    arrays = {
        p["name"]
        for p in case.operation.definition.raw.get("parameters", [])
        if p.get("in") == "query" and "array" in json.dumps(p.get("schema", {}))
    }
    query = case.query if isinstance(case.query, dict) else {}
    if any(isinstance(v, list | dict) and k not in arrays for k, v in query.items()):
        return None
    result: bool | None = sc.negative_data_rejection(ctx, response, case)
    return result


@schemathesis.check
def hub_positive_data_acceptance(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    _record("hub_positive_data_acceptance")
    if response.status_code == 422 and _refused_for_its_meaning(case, response):
        return None
    result: bool | None = sc.positive_data_acceptance(ctx, response, case)
    return result


def _refused_for_its_meaning(case: schemathesis.Case[Any], response: schemathesis.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    detail = str(body.get("detail", ""))
    return (
        body.get("title") == "Command rejected"
        or detail.startswith("invalid cursor ")
        or (case.operation.path == "/api/v1/provisioning/bulk" and body.get("reason") == "invalid")
    )
