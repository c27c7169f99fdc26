"""An InfluxDB 2.x API front for the real ``influxd`` 1.x the tests run.

No InfluxDB 2.x or 3.x server can be installed here (Debian ships 1.6.7, which has no
``/api/v2``), so this serves the part of the 2.x HTTP API the hub uses, as documented, in
front of a real 1.x server:

- ``POST /api/v2/write?org=&bucket=&precision=`` with ``Authorization: Token ...``: checked
  like 2.x does (401 on a bad token, 404 on an unknown organisation or bucket, JSON error
  bodies ``{"code", "message"}``), then the line protocol is written to the 1.x database
  named like the bucket, so what the hub writes really lands in InfluxDB;
- ``GET|POST /query`` (the v1 compatibility API) with the token: forwarded to 1.x;
- ``POST /api/v2/query?org=`` (Flux): 1.x cannot run Flux, so the test sets the annotated CSV
  to answer (``flux_answer``) and reads the Flux the hub sent (``flux_queries``);
- ``GET /ping``, ``GET /health``.

``fail_next(status, times, headers, body)`` answers the next writes with an error, as an
overloaded or refusing server would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

__all__ = ["InfluxV2Front"]


@dataclass
class _Failure:
    status: int
    times: int
    headers: dict[str, str]
    body: dict[str, str]


@dataclass
class InfluxV2Front:
    backend_url: str
    org: str = "city"
    token: str = "test-token"
    buckets: set[str] = field(default_factory=set)
    flux_queries: list[str] = field(default_factory=list)
    flux_answer: str | None = None
    writes: int = 0
    refused: int = 0
    _failures: list[_Failure] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    url: str = ""

    def fail_next(
        self,
        status: int,
        times: int = 1,
        headers: dict[str, str] | None = None,
        message: str = "injected by the test",
    ) -> None:
        self._failures.append(
            _Failure(status, times, headers or {}, {"code": "test", "message": message})
        )

    async def start(self) -> InfluxV2Front:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/v2/write", self._write)
        app.router.add_post("/api/v2/query", self._flux)
        app.router.add_route("*", "/query", self._v1_query)
        app.router.add_get("/ping", self._ping)
        app.router.add_get("/health", self._health)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- handlers ---------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message}, status=status)

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Token {self.token}"

    async def _write(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "unauthorized", "unauthorized access")
        org, bucket = request.query.get("org"), request.query.get("bucket", "")
        if org != self.org:
            return self._error(404, "not found", f'organization name "{org}" not found')
        if bucket not in self.buckets:
            return self._error(404, "not found", f'bucket "{bucket}" not found')
        if self._failures:
            failure = self._failures[0]
            failure.times -= 1
            if failure.times <= 0:
                self._failures.pop(0)
            self.refused += 1
            return web.Response(
                status=failure.status,
                headers=failure.headers,
                text=json.dumps(failure.body),
                content_type="application/json",
            )
        body = await request.read()
        assert self._session is not None
        async with self._session.post(
            f"{self.backend_url}/write",
            params={"db": bucket, "precision": request.query.get("precision", "ns")},
            data=body,
        ) as answer:
            text = await answer.text()
            if answer.status != 204:
                return self._error(400 if answer.status < 500 else 503, "invalid", text)
        self.writes += 1
        return web.Response(status=204)

    async def _v1_query(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "unauthorized", "unauthorized access")
        params = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            params.update({k: str(v) for k, v in (await request.post()).items()})
        assert self._session is not None
        async with self._session.post(f"{self.backend_url}/query", params=params) as answer:
            return web.Response(
                status=answer.status, body=await answer.read(), content_type="application/json"
            )

    async def _flux(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "unauthorized", "unauthorized access")
        if request.query.get("org") != self.org:
            return self._error(404, "not found", "organization not found")
        body = await request.json()
        self.flux_queries.append(str(body.get("query", "")))
        if self.flux_answer is None:
            return self._error(400, "invalid", "this test server answers no Flux")
        return web.Response(text=self.flux_answer, content_type="text/csv")

    async def _ping(self, _request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"X-Influxdb-Version": "v2.7.0-test-front"})

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"name": "influxdb", "status": "pass", "version": "test-front"})
