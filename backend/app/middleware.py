"""Pure ASGI middleware: request ids, a body size limit and a JSON response for unhandled errors."""

import json
import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import request_id_var

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# A client-sent request id is kept only if it is short and plain, so it is safe in logs.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


async def send_json(send: Send, status_code: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestIdMiddleware:
    """Give every request an id, put it on each log line of the request and in X-Request-ID."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if REQUEST_ID_PATTERN.match(sent) else uuid.uuid4().hex
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class BodySizeLimitError(Exception):
    pass


class BodySizeLimitMiddleware:
    """Reject bodies over MAX_BODY_BYTES with 413, by declared length or by counting the stream."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body is larger than the limit of {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_json(send, 413, {"detail": message})
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    raise BodySizeLimitError
            return incoming

        async def tracking_send(outgoing: Message) -> None:
            nonlocal response_started
            if outgoing["type"] == "http.response.start":
                response_started = True
            await send(outgoing)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodySizeLimitError:
            if not response_started:
                await send_json(send, 413, {"detail": message})


class UnhandledErrorMiddleware:
    """Turn an unhandled exception into a JSON 500 inside CORS, so browsers can read it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception(
                "unhandled error in %s %s", scope.get("method"), scope.get("path"), extra={"event": "unhandled_error"}
            )
            if response_started:
                raise
            await send_json(
                send, 500, {"detail": "internal error; the request id in X-Request-ID finds it in the server log"}
            )
