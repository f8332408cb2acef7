"""The few ASGI moves the doubles make by hand: they speak raw ASGI so that a test sees exactly what goes on
the wire, chunk by chunk, and when the client goes away."""

from __future__ import annotations

import json
from typing import Any


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return b"".join(chunks)


async def wait_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def start(status: int, content_type: str) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]}


async def chunk(send: Any, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def end(send: Any) -> None:
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def respond(send: Any, status: int, content_type: str, body: bytes) -> None:
    """A whole answer in one body message, without Content-Length (the server adds what it adds)."""
    await send(start(status, content_type))
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Any, document: Any, status: int = 200) -> None:
    """JSON with its Content-Length, as Ollama answers."""
    body = json.dumps(document).encode()
    head = start(status, "application/json")
    head["headers"].append((b"content-length", str(len(body)).encode()))
    await send(head)
    await send({"type": "http.response.body", "body": body})
