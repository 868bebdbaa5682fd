"""What the server refuses before a request reaches a route, always in OpenAI's error shape.

- BodyLimit: a body over --max-body-bytes gets 413, before it is read into memory.
- HostCheck: a server on loopback answers only requests whose Host header names loopback
  (localhost, 127.0.0.1, [::1]) or an --allowed-host. Otherwise a web page on any site could
  reach it through a DNS name that resolves to 127.0.0.1 (DNS rebinding), since browsers send
  that name as the Host.
- ApiKeys: with --api-key set, every /v1 route needs `Authorization: Bearer KEY` (401 without);
  /health, the web page and its files stay open, so a load balancer and a browser can reach them.
- JsonErrorsProtocol: a request so malformed that uvicorn's HTTP parser rejects it (a
  Content-Length of "abc") gets a JSON 400 too, instead of uvicorn's plain text.
"""

from __future__ import annotations

import hmac
import json

from fastapi.responses import JSONResponse

from genlab.server.protocol import APIError

LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def allowed_hosts(host: str, extra: list[str]) -> set[str] | None:
    """The Host names to answer: loopback's when serving on loopback (plus `extra`); None (any) otherwise."""
    if is_loopback(host):
        return LOOPBACK | {h.lower() for h in extra}
    return {h.lower() for h in extra} or None


def host_name(header: str) -> str:
    """'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    def __init__(self, app, names: set[str] | None):
        self.app, self.names = app, names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.names is None:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_name(header) not in self.names:
            e = APIError(400, f"this server answers only requests for {', '.join(sorted(self.names))}, not Host {header!r}; "
                              "name more with genlab serve --allowed-host", code="host_not_allowed")
            return await JSONResponse(e.body(), status_code=400)(scope, receive, send)
        return await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    return host.strip("[]") in LOOPBACK or host.startswith("127.")


class ApiKeys:
    """Refuse /v1 requests without one of `keys` as a Bearer token, with OpenAI's 401 (code invalid_api_key)."""

    def __init__(self, app, keys: list[str]):
        self.app, self.keys = app, [k.encode() for k in keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or not scope["path"].startswith("/v1") or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)  # (an OPTIONS preflight carries no key; CORS answers it)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        # compare_digest against every key: the time taken does not tell how much of a guess was right
        if scheme.lower() == b"bearer" and sum(hmac.compare_digest(given.strip(), k) for k in self.keys):
            return await self.app(scope, receive, send)
        e = APIError(401, "a valid API key is required: send the header Authorization: Bearer KEY" if not header else
                     "incorrect API key provided; give one of the keys this server was started with (--api-key)",
                     code="invalid_api_key")
        await JSONResponse(e.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, before any of it reaches a route."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        if length is not None:
            return await self.app(scope, receive, send)
        body, more = [], True  # no length given (chunked): read it here, up to the limit
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
            if sum(map(len, body)) > self.limit:
                return await self._refuse(send)
        replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send) -> None:
        e = APIError(413, f"the request body is larger than this server's limit of {self.limit} bytes", code="body_too_large")
        await JSONResponse(e.body(), status_code=413)({"type": "http"}, None, send)


def json_errors_protocol():
    """uvicorn's h11 protocol, with its answer to an unparseable request in OpenAI's error shape."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorsProtocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            e = APIError(400, f"malformed HTTP request: {msg or 'it could not be parsed'}", code="bad_request")
            body = json.dumps(e.body()).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JsonErrorsProtocol


def uvicorn_config(app, **kwargs):
    """The uvicorn configuration genlab serves with (the CLI and the tests): the JSON 400 protocol."""
    import uvicorn

    return uvicorn.Config(app, http=json_errors_protocol(), **kwargs)

