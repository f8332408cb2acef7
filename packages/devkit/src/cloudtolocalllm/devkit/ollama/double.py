"""The Ollama double: Ollama's native API, built from real Ollama response shapes, as a raw ASGI app, for what a
small llama.cpp model cannot show (pull progress, blobs, create/copy/delete, observable cancellation), and
steerable by tests; with ``openai=True`` it is an OpenAI-compatible server instead (llama.cpp, LM Studio).

One double for every tier, configured where they differ:

- ``/api/chat`` streams a counting answer (``chat_tokens`` lines, ``chat_delay_s`` apart; a request's
  ``options.num_predict`` and ``options.delay_ms`` override both), or ``chat_script`` (raw writes,
  ``chunk_gap_s`` apart: a test sets the network chunk boundaries), or what a test puts in ``chat_queue``
  (``None`` ends it) as the model produces it;
- ``/api/pull`` streams progress lines, or with ``pull_bytes`` that many bytes as fast as the reader takes
  them (``pull_produced`` shows where the producer stands);
- ``/api/generate`` streams until the client goes away (or ``generate_chunks`` lines); ``/api/embed`` never
  answers: both record when the client went away.

It records ``requests`` (method, path with query, headers) and ``events`` (kind, monotonic time, data).
Tests in the same event loop serve it with ``core.testing.running_server``; synchronous callers (the official
clients through the tunnel) use it as a context manager, which serves it on a thread of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.devkit.ollama import asgi
from cloudtolocalllm.devkit.ollama.openai import OpenAIServer

NDJSON = "application/x-ndjson"
CREATED_AT = "2026-11-26T00:00:00Z"
# A real `ollama show` of llama3.2:1b, for the contract double.
LLAMA32 = "llama3.2:1b"
LLAMA32_TAG = {
    "name": LLAMA32,
    "model": LLAMA32,
    "modified_at": "2026-10-01T12:00:00.000000000Z",
    "size": 1321098329,
    "digest": "baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878",
    "details": {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1.2B",
        "quantization_level": "Q8_0",
    },
}


@dataclass
class OllamaDouble:
    # What it serves.
    models: list[str] = field(default_factory=lambda: ["llama3:8b", "smollm2:135m"])
    tags: list[dict[str, Any]] | None = None
    """/api/tags' entries; by default ``{"name": <model>}`` for each of ``models``."""
    version: str = "0.9.0"
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    """What /api/show reports, e.g. ["completion", "vision"]."""
    openai: bool = False
    """Behave like llama.cpp's server or LM Studio: /v1 only (``openai_api``), no Ollama-native API."""
    openai_api: OpenAIServer = field(default_factory=OpenAIServer)
    # How /api/chat answers (see the module docstring).
    chat_tokens: int = 200
    chat_delay_s: float = 0.05
    chat_script: list[bytes] | None = None
    chunk_gap_s: float = 0.15
    chat_queue: asyncio.Queue[bytes | None] | None = None
    generate_chunks: int = 0
    """0: /api/generate streams until the client goes away; n: n chunks then the end."""
    pull_bytes: int | None = None
    # What it saw.
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    events: list[tuple[str, float, Any]] = field(default_factory=list)
    chat_yielded: list[float] = field(default_factory=list)
    generate_started: asyncio.Event = field(default_factory=asyncio.Event)
    generate_done: asyncio.Event = field(default_factory=asyncio.Event)
    generate_disconnected_at: float | None = None
    embed_disconnected_at: float | None = None
    pull_produced: int = 0
    upload: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, int] = field(default_factory=dict)
    url: str = ""
    _thread: _ServedOnAThread | None = field(default=None, init=False, repr=False)

    def event_times(self, kind: str) -> list[float]:
        return [t for k, t, _ in list(self.events) if k == kind]

    def event_data(self, kind: str) -> list[Any]:
        return [data for k, _, data in list(self.events) if k == kind]

    def _event(self, kind: str, data: Any = None) -> None:
        self.events.append((kind, time.monotonic(), data))

    # --- the app ------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await asgi.lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = scope["query_string"].decode()
        self.requests.append((method, path + ("?" + query if query else ""), headers))
        if self.openai:
            await self.openai_api.serve(scope, receive, send, self.models)
            return
        handler = _ROUTES.get(path)
        if handler is not None:
            await handler(self, receive, send)
        elif path.startswith("/api/blobs/") and method in ("HEAD", "POST"):
            await self._blob(method, path.removeprefix("/api/blobs/"), receive, send)
        else:
            await asgi.read_body(receive)
            await asgi.respond_json(send, {"error": "not found"}, status=404)

    async def _version(self, receive: Any, send: Any) -> None:
        await asgi.respond_json(send, {"version": self.version})

    async def _tags(self, receive: Any, send: Any) -> None:
        await asgi.respond_json(
            send, {"models": self.tags if self.tags is not None else [{"name": m} for m in self.models]}
        )

    async def _show(self, receive: Any, send: Any) -> None:
        body = await _json_body(receive)
        tag = next((t for t in self.tags or [] if t.get("name") == body.get("model")), None)
        if tag is None:
            await asgi.respond_json(send, {"error": f"model '{body.get('model')}' not found"}, status=404)
            return
        await asgi.respond_json(
            send,
            {
                "license": "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
                "modelfile": '# Modelfile generated by "ollama show"',
                "parameters": 'stop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": tag.get("details", {}),
                "model_info": {
                    "general.architecture": "llama",
                    "general.parameter_count": 1235814432,
                    "llama.context_length": 131072,
                    "llama.embedding_length": 2048,
                },
                "capabilities": self.capabilities,
                "modified_at": tag.get("modified_at", CREATED_AT),
            },
        )

    async def _chat(self, receive: Any, send: Any) -> None:
        body = await _json_body(receive)
        options = body.get("options") or {}
        tokens = int(options.get("num_predict", self.chat_tokens))
        delay = float(options.get("delay_ms", self.chat_delay_s * 1000)) / 1000  # 0: as fast as the reader allows
        self._event("chat-start", tokens)
        self._event("chat-body", body)

        async def answer() -> None:
            await send(asgi.start(200, NDJSON))
            if self.chat_queue is not None:
                while (chunk := await self.chat_queue.get()) is not None:
                    self.chat_yielded.append(time.monotonic())
                    await asgi.chunk(send, chunk)
            elif self.chat_script is not None:
                for i, chunk in enumerate(self.chat_script):
                    if i:
                        await asyncio.sleep(self.chunk_gap_s)
                    await asgi.chunk(send, chunk)
            else:
                await self._count(send, tokens, delay)
            await asgi.end(send)
            self._event("chat-done")

        try:
            await _until_disconnect(answer(), receive)
        finally:
            # Also when the client (the bridge) closed the connection: generation stops here.
            self._event("chat-closed")

    async def _count(self, send: Any, tokens: int, delay: float) -> None:
        model = self.models[0]
        for i in range(tokens):
            line = {"model": model, "created_at": CREATED_AT, "message": {"role": "assistant", "content": f"t{i} "}}
            await asgi.chunk(send, json.dumps({**line, "done": False}).encode() + b"\n")
            await asyncio.sleep(delay)
        done = {
            "model": model,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "eval_count": tokens,
            "eval_duration": int(tokens * max(delay, 0.001) * 1e9),  # ns, like Ollama
        }
        await asgi.chunk(send, json.dumps(done).encode() + b"\n")

    async def _generate(self, receive: Any, send: Any) -> None:
        await _json_body(receive)
        await send(asgi.start(200, NDJSON))
        self.generate_started.set()

        async def pump() -> None:
            n = 0
            while self.generate_chunks == 0 or n < self.generate_chunks:
                await asgi.chunk(send, b'{"response":"x"}\n')
                n += 1
                await asyncio.sleep(0.05)
            await asgi.end(send)
            self.generate_done.set()

        if await _until_disconnect(pump(), receive):
            self.generate_disconnected_at = time.monotonic()

    async def _embed(self, receive: Any, send: Any) -> None:
        # Like a non-streaming generation: no response head until the work is done (never, here).
        await asgi.read_body(receive)
        await asgi.wait_disconnect(receive)
        self.embed_disconnected_at = time.monotonic()

    async def _pull(self, receive: Any, send: Any) -> None:
        body = await _json_body(receive)
        self._event("pull", body.get("model"))
        await send(asgi.start(200, NDJSON))
        if self.pull_bytes is not None:
            block = (b'{"status":"pulling","completed":1}' + b" " * 1000 + b"\n") * 64
            while self.pull_produced < self.pull_bytes:
                await asgi.chunk(send, block)
                self.pull_produced += len(block)
        else:
            await asgi.chunk(send, b'{"status":"pulling manifest"}\n')
            total = 4000
            for completed in range(0, total + 1, 1000):
                line = {
                    "status": "pulling baf6a787fdff",
                    "digest": "sha256:baf6",
                    "total": total,
                    "completed": completed,
                }
                await asgi.chunk(send, json.dumps(line).encode() + b"\n")
                await asyncio.sleep(0.01)
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                await asgi.chunk(send, json.dumps({"status": status}).encode() + b"\n")
        await asgi.end(send)

    async def _blob(self, method: str, digest: str, receive: Any, send: Any) -> None:
        if method == "HEAD":
            await send(asgi.start(200 if digest in self.blobs else 404, "application/json"))
            await asgi.end(send)
            return
        hasher = hashlib.sha256()
        size = 0
        while True:  # what arrived, also when the client went away mid-body
            message = await receive()
            hasher.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.upload = {"size": size, "sha256": hasher.hexdigest()}
        if f"sha256:{hasher.hexdigest()}" != digest:
            await asgi.respond_json(send, {"error": "digest mismatch"}, status=400)
            return
        self.blobs[digest] = size
        self._event("blob", size)
        await asgi.respond_json(send, self.upload, status=201)  # what it received (Ollama answers 201, no body)

    async def _create(self, receive: Any, send: Any) -> None:
        body = await _json_body(receive)
        self._event("create", body)
        if body.get("stream") is False:  # like Ollama: one final object instead of the progress stream
            await asgi.respond_json(send, {"status": "success"})
            return
        lines = [{"status": "using existing layer sha256:x"}, {"status": "writing manifest"}, {"status": "success"}]
        await asgi.respond(send, 200, NDJSON, "".join(json.dumps(x) + "\n" for x in lines).encode())

    async def _copy(self, receive: Any, send: Any) -> None:
        self._event("copy", await _json_body(receive))
        await asgi.respond(send, 200, "application/json", b"")

    async def _delete(self, receive: Any, send: Any) -> None:
        self._event("delete", await _json_body(receive))
        await asgi.respond(send, 200, "application/json", b"")

    # --- on a thread of its own, for synchronous callers ----------------------------------------------

    def __enter__(self) -> OllamaDouble:
        self._thread = _ServedOnAThread(self)
        self.url = self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._thread.stop()


class _ServedOnAThread:
    def __init__(self, app: OllamaDouble) -> None:
        self.app = app
        self.url = ""
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None

    def start(self) -> str:
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the Ollama double did not start")
        return self.url

    def stop(self) -> None:
        if self.loop is not None and self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(30)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        async with running_server(self.app) as url:  # type: ignore[arg-type]
            self.url = url
            self.ready.set()
            await self.stopping.wait()


# By path alone, whatever the method, as the tests' requests come (Ollama itself is stricter).
_ROUTES = {
    "/api/version": OllamaDouble._version,
    "/api/tags": OllamaDouble._tags,
    "/api/show": OllamaDouble._show,
    "/api/chat": OllamaDouble._chat,
    "/api/generate": OllamaDouble._generate,
    "/api/embed": OllamaDouble._embed,
    "/api/pull": OllamaDouble._pull,
    "/api/create": OllamaDouble._create,
    "/api/copy": OllamaDouble._copy,
    "/api/delete": OllamaDouble._delete,
}


def contract_double(**overrides: Any) -> OllamaDouble:
    """The double as real Ollama 0.6.2 with llama3.2:1b pulled (the end-to-end tests' backend)."""
    return OllamaDouble(**{"models": [LLAMA32], "tags": [LLAMA32_TAG], "version": "0.6.2", **overrides})


async def _json_body(receive: Any) -> dict[str, Any]:
    """The request's JSON object; ``{}`` for an empty body or one that is not a JSON object."""
    raw = await asgi.read_body(receive)
    try:
        document = json.loads(raw)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


async def _until_disconnect(work: Any, receive: Any) -> bool:
    """Run ``work`` until it ends or the client goes away (then cancel it); True if the client went away."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(asgi.wait_disconnect(receive))
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, waiter):
        pending.cancel()
    await asyncio.gather(task, waiter, return_exceptions=True)
    return waiter in done
