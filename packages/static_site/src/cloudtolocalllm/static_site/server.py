"""The ASGI app that serves one directory (mounted by :mod:`cloudtolocalllm.static_site.app` under core).

It is a plain ASGI callable rather than a starlette endpoint: responses are written as raw messages, so a
small file costs one ``http.response.body`` message and a large one streams in chunks read from an open
descriptor, while a background task listens for the client going away and stops the reading.

Blocking file-system work never runs on the event loop. Each request's metadata work (resolve, stat, open,
read of a small file) is one call on a small dedicated thread pool — measured at about half the CPU of
``anyio.to_thread`` per request, whose larger pool thrashes the GIL under concurrency. Chunks of large files
are read with ``anyio.to_thread``, whose cancellation waits for the read in flight, so a descriptor is never
closed under a running read when the client leaves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
from collections.abc import Callable, Mapping
from typing import Final
from urllib.parse import quote

import anyio
import anyio.to_thread
from starlette.types import Message, Receive, Scope, Send

from cloudtolocalllm.static_site.cache import NO_CACHE, cache_control
from cloudtolocalllm.static_site.files import INDEX, Found, Missing, Redirect, lookup
from cloudtolocalllm.static_site.negotiation import acceptable_codings, accepts_html
from cloudtolocalllm.static_site.paths import RequestPath, parse_request_path
from cloudtolocalllm.static_site.validators import (
    UNSATISFIABLE,
    http_date,
    if_range_allows,
    not_modified,
    parse_range,
)

__all__ = ["CHUNK_SIZE", "SMALL_FILE_MAX", "FileChangedError", "StaticFiles"]

CHUNK_SIZE: Final = 128 * 1024
SMALL_FILE_MAX: Final = 64 * 1024
NOT_FOUND_PAGE: Final = "404.html"

_ALLOWED: Final = ("GET", "HEAD")
_WANTED: Final = frozenset(
    {b"accept", b"accept-encoding", b"if-none-match", b"if-modified-since", b"range", b"if-range"}
)
_TEXT_PLAIN: Final = b"text/plain; charset=utf-8"
_QUERY_SAFE: Final = frozenset(range(0x21, 0x7F))

Headers = list[tuple[bytes, bytes]]


class FileChangedError(OSError):
    """The file shrank while it was being streamed; the response cannot be completed truthfully."""


@functools.cache
def _file_executor() -> concurrent.futures.ThreadPoolExecutor:
    """One pool per process, shared by every app; sized like asyncio's default executor."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="static-files"
    )


def _close_abandoned(future: concurrent.futures.Future[Found | Missing | Redirect]) -> None:
    """A lookup whose request was cancelled may still have opened a file: close it."""
    if future.cancelled() or future.exception() is not None:
        return
    result = future.result()
    if isinstance(result, Found) and result.fd is not None:
        os.close(result.fd)


async def _in_pool(call: Callable[[], Found | Missing | Redirect]) -> Found | Missing | Redirect:
    future = _file_executor().submit(call)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_abandoned)
        raise


def _request_headers(scope: Scope) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED and name not in found:
            found[name] = value.decode("latin-1")
    return found


async def _plain(send: Send, status: int, text: str, headers: Headers, *, head: bool) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", _TEXT_PLAIN),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


class StaticFiles:
    """Serves files under ``root``; see the module docs of the package for the rules."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        spa: bool = False,
        max_age: int = 300,
        chunk_size: int = CHUNK_SIZE,
        small_file_max: int = SMALL_FILE_MAX,
    ) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"not a directory: {root}")
        self.spa = spa
        self.max_age = max_age
        self.chunk_size = chunk_size
        self.small_file_max = small_file_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        head = method == "HEAD"
        if method not in _ALLOWED:
            await _plain(send, 405, "Method Not Allowed\n", [(b"allow", b"GET, HEAD")], head=False)
            return
        headers = _request_headers(scope)
        raw_path = scope.get("raw_path") or quote(scope["path"]).encode()
        request = parse_request_path(raw_path)
        if request is None:
            await self._not_found(send, headers, head=head)
            return

        result = await self._lookup(request, headers, head=head)
        name = request.name or INDEX
        if isinstance(result, Redirect):
            await self._redirect(scope, send, request, head=head)
            return
        if isinstance(result, Missing):
            if not (result.fallback and self.spa and "." not in request.name and accepts_html(headers.get(b"accept"))):
                await self._not_found(send, headers, head=head)
                return
            result = await self._lookup(RequestPath((INDEX,), False), headers, head=head)
            if not isinstance(result, Found):
                await self._not_found(send, headers, head=head)
                return
            name = INDEX
        elif request.trailing_slash:
            name = INDEX
        await self._send_found(scope, receive, send, result, cache_control(name, max_age=self.max_age), headers)

    async def _lookup(
        self, request: RequestPath, headers: Mapping[bytes, str], *, head: bool, conditional: bool = True
    ) -> Found | Missing | Redirect:
        def body_wanted(etag: str, mtime: float) -> bool:
            return not head and not (
                conditional
                and not_modified(
                    etag,
                    mtime,
                    if_none_match=headers.get(b"if-none-match"),
                    if_modified_since=headers.get(b"if-modified-since"),
                )
            )

        return await _in_pool(
            functools.partial(
                lookup,
                self.root,
                request.segments,
                trailing_slash=request.trailing_slash,
                codings=acceptable_codings(headers.get(b"accept-encoding")),
                body_wanted=body_wanted,
                small_file_max=self.small_file_max,
            )
        )

    async def _redirect(self, scope: Scope, send: Send, request: RequestPath, *, head: bool) -> None:
        # Relative to the requested URL, so it stays right behind any proxy prefix or host name.
        location = quote(request.name, safe="") + "/"
        query: bytes = scope.get("query_string", b"")
        if query and all(byte in _QUERY_SAFE for byte in query):
            location += "?" + query.decode("ascii")
        await _plain(
            send,
            301,
            "Moved Permanently\n",
            [(b"location", location.encode("ascii")), (b"cache-control", f"public, max-age={self.max_age}".encode())],
            head=head,
        )

    async def _not_found(self, send: Send, headers: Mapping[bytes, str], *, head: bool) -> None:
        """404, with the root's ``404.html`` as the body when there is one (MkDocs builds one)."""
        page = await self._lookup(RequestPath((NOT_FOUND_PAGE,), False), headers, head=head, conditional=False)
        no_cache = (b"cache-control", NO_CACHE.encode())
        if not isinstance(page, Found) or page.fd is not None:
            if isinstance(page, Found) and page.fd is not None:
                os.close(page.fd)  # a 404 page over the small-file limit is not worth streaming
            await _plain(send, 404, "Not Found\n", [no_cache], head=head)
            return
        response: Headers = [
            (b"content-type", page.content_type.encode()),
            (b"content-length", str(page.size).encode()),
            no_cache,
        ]
        if page.coding:
            response.append((b"content-encoding", page.coding.encode()))
        if page.vary:
            response.append((b"vary", b"Accept-Encoding"))
        await send({"type": "http.response.start", "status": 404, "headers": response})
        await send({"type": "http.response.body", "body": page.body or b""})

    async def _send_found(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        found: Found,
        cache: str,
        headers: Mapping[bytes, str],
    ) -> None:
        """Answer with ``found``; owns (and always closes) its descriptor, whatever happens."""
        fd = found.fd
        try:
            common: Headers = [
                (b"etag", found.etag.encode()),
                (b"last-modified", http_date(found.mtime).encode()),
                (b"cache-control", cache.encode()),
            ]
            if found.vary:
                common.append((b"vary", b"Accept-Encoding"))
            if not_modified(
                found.etag,
                found.mtime,
                if_none_match=headers.get(b"if-none-match"),
                if_modified_since=headers.get(b"if-modified-since"),
            ):
                # For GET the lookup made the same decision and did not read the file.
                await send({"type": "http.response.start", "status": 304, "headers": common})
                await send({"type": "http.response.body", "body": b""})
                return

            common.append((b"accept-ranges", b"bytes"))
            status = 200
            first, last = 0, found.size - 1
            if scope["method"] == "GET" and if_range_allows(headers.get(b"if-range"), found.etag, found.mtime):
                selected = parse_range(headers.get(b"range"), found.size)
                if selected is UNSATISFIABLE:
                    unsatisfiable = [(b"content-range", f"bytes */{found.size}".encode()), *common]
                    await _plain(send, 416, "Range Not Satisfiable\n", unsatisfiable, head=False)
                    return
                if isinstance(selected, tuple):
                    status = 206
                    first, last = selected
                    common.append((b"content-range", f"bytes {first}-{last}/{found.size}".encode()))
            length = last - first + 1
            common.append((b"content-type", found.content_type.encode()))
            common.append((b"content-length", str(length).encode()))
            if found.coding:
                common.append((b"content-encoding", found.coding.encode()))
            await send({"type": "http.response.start", "status": status, "headers": common})
            if found.body is not None:
                body = found.body if status == 200 else found.body[first : last + 1]
                await send({"type": "http.response.body", "body": body})
            elif fd is not None:
                owned, fd = fd, None  # _stream closes it from here on
                await self._stream(receive, send, owned, first, length)
            else:  # HEAD
                await send({"type": "http.response.body", "body": b""})
        finally:
            if fd is not None:
                os.close(fd)

    async def _stream(self, receive: Receive, send: Send, fd: int, offset: int, length: int) -> None:
        """Send ``length`` bytes from ``offset`` in chunks; stop reading as soon as the client leaves."""
        short = False
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_watch_disconnect, receive, tasks.cancel_scope)
                remaining = length
                while remaining > 0:
                    want = min(self.chunk_size, remaining)
                    chunk = await anyio.to_thread.run_sync(os.pread, fd, want, offset)
                    if not chunk:
                        short = True
                        break
                    offset += len(chunk)
                    remaining -= len(chunk)
                    message: Message = {
                        "type": "http.response.body",
                        "body": chunk,
                        "more_body": remaining > 0,
                    }
                    await send(message)
                tasks.cancel_scope.cancel()
        finally:
            os.close(fd)
        if short:
            # Content-Length is already on the wire: failing is the only honest end (the server then
            # closes the connection, and the client sees a truncated download instead of a wrong file).
            raise FileChangedError(f"file shrank while being sent ({remaining} bytes missing)")
