"""What a stranger's connection to `alexnet serve` may hold: its request must arrive whole within a deadline, its
body stays under a size limit, and it must name this server in its Host header (a web page that a name resolving
to 127.0.0.1 serves must not reach it: DNS rebinding)."""

import asyncio

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # the names of this machine that no other can be reached by
ANY_ADDRESS = ("0.0.0.0", "::", "")  # a --host that listens on every interface names none of them


def allowed_hosts(host: str, more: str | None = None) -> frozenset[str]:
    """The Host names a server listening at `host` answers to: this machine's own, `host` itself where it is a
    name or one address, and the comma-separated `more` ("*": any)."""
    names = {*LOCAL_HOSTS, *(name.strip() for name in (more or "").split(",") if name.strip())}
    if host not in ANY_ADDRESS:
        names.add(f"[{host}]" if ":" in host else host)
    return frozenset(name.lower() for name in names)


def host_name(header: str) -> str:
    """The name in a Host header, without its port: 'example.org:8000' -> 'example.org', '[::1]:80' -> '[::1]'."""
    header = header.strip().lower()
    return header[:header.find("]") + 1] if header.startswith("[") else header.split(":")[0]


class HostCheck:
    """ASGI middleware: a request whose Host header names none of `hosts` ("*" among them: any) is answered 400."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.hosts:
            name = host_name(dict(scope["headers"]).get(b"host", b"").decode("latin-1"))
            if name not in self.hosts:
                error = f"Host {name or '(none)'!r} is not a name of this server ({', '.join(sorted(self.hosts))})"
                return await JSONResponse({"error": error}, 400)(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413, from its Content-Length before it is
    read, or as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"error": self.message()}, 413)(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self.message())
            return message

        return await self.app(scope, limited, send)

    def message(self) -> str:
        """The one line of a 413."""
        return f"the request is over the limit of {self.limit / 2**20:g} MiB"


class Deadline(AutoHTTPProtocol):
    """uvicorn's HTTP protocol (httptools', else h11's), with a deadline: a connection is closed unless the whole
    of each request, its headers and its body, arrives within `timeout` seconds of the connection or of the
    previous answer. uvicorn itself closes an idle connection only after an answer (its keep-alive), so a client
    that sends half a request, or nothing, would otherwise hold its socket for ever."""

    timeout = 30.0  # seconds; `deadline` makes the class of another

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            self._disarm()  # the request is all in: answering it may take as long as it takes

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection has its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self.timeout, self.transport.close)

    def _disarm(self) -> None:
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()
            self._timer = None


def deadline(timeout: float) -> type[Deadline]:
    """uvicorn's HTTP protocol with a deadline of `timeout` seconds for each request (uvicorn.run's `http`)."""
    return type("Deadline", (Deadline,), {"timeout": timeout})
