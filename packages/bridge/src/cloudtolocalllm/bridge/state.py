"""Files in the bridge's state dir: its stable id and the status file that ``status`` reads.

- ``bridge-id``: a random id created on first run and kept, so the cloud recognises this bridge across
  restarts (and closes an older connection of the same bridge with REPLACED).
- ``status.json``: written by the running bridge (atomically: temp file + rename) whenever its
  connection or backend state changes, and read by ``cloudtolocalllm-bridge status``. It holds no
  secrets and no conversation content.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["BridgeStatusFile", "StatusSnapshot", "load_or_create_bridge_id", "pid_alive"]

_ID_FILE = "bridge-id"
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
"""What the cloud accepts as a bridge id (1-64 of these characters; ours are at least 8 long)."""
STATUS_FILE = "status.json"


def _ensure_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def load_or_create_bridge_id(state_dir: Path) -> str:
    """The id stored in ``state_dir/bridge-id``, created (random, 0600) on first use."""
    _ensure_dir(state_dir)
    path = state_dir / _ID_FILE
    with contextlib.suppress(FileNotFoundError):
        existing = path.read_text().strip()
        if _VALID_ID.fullmatch(existing):
            return existing
    bridge_id = "br-" + secrets.token_hex(16)
    tmp = path.with_name(f".{_ID_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(bridge_id + "\n")
    os.replace(tmp, path)
    return bridge_id


class StatusSnapshot(msgspec.Struct, kw_only=True):
    """What ``status.json`` holds."""

    pid: int
    updated_at: float
    state: str = "starting"
    """starting | connecting | connected | disconnected | stopping | stopped"""
    since: float = 0.0
    """When ``state`` last changed (Unix time)."""
    cloud_url: str = ""
    session_id: str | None = None
    bridge_id: str = ""
    name: str = ""
    backend_url: str = ""
    backend_kind: str = ""
    backend_reachable: bool = False
    models: list[str] = msgspec.field(default_factory=list)
    streams_in_flight: int = 0
    read_only: bool = False
    last_error: str | None = None
    software_version: str = ""


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class BridgeStatusFile:
    """Keeps a StatusSnapshot and writes it to ``state_dir/status.json`` at most every ``min_interval_s``."""

    def __init__(self, state_dir: Path, *, min_interval_s: float = 1.0) -> None:
        self.path = state_dir / STATUS_FILE
        self.snapshot = StatusSnapshot(pid=os.getpid(), updated_at=time.time(), since=time.time())
        self._min_interval_s = min_interval_s
        self._last_write = 0.0
        self._dirty = False
        self._pending: asyncio.TimerHandle | None = None

    def update(self, *, force: bool = False, **changes: Any) -> None:
        """Change fields (``state`` changes also move ``since``) and write if due."""
        if "state" in changes and changes["state"] != self.snapshot.state:
            self.snapshot.since = time.time()
        for key, value in changes.items():
            setattr(self.snapshot, key, value)
        self._dirty = True
        self.flush(force=force)

    def flush(self, *, force: bool = False) -> None:
        if not self._dirty:
            return
        now = time.monotonic()
        if not force and now - self._last_write < self._min_interval_s:
            self._flush_later(self._min_interval_s - (now - self._last_write))
            return
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self.snapshot.updated_at = time.time()
        try:
            _ensure_dir(self.path.parent)
            tmp = self.path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(msgspec.json.format(msgspec.json.encode(self.snapshot)))
            os.replace(tmp, self.path)
        except OSError:
            return  # status is best effort; the bridge keeps working without it
        self._last_write = now
        self._dirty = False

    def _flush_later(self, delay_s: float) -> None:
        """A throttled change is still written, at most ``min_interval_s`` late (not on the request path)."""
        if self._pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (CLI, tests): the next update or an explicit flush writes it
        self._pending = loop.call_later(delay_s, self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._pending = None
        self.flush()

    @staticmethod
    def read(state_dir: Path) -> StatusSnapshot | None:
        try:
            raw = (state_dir / STATUS_FILE).read_bytes()
        except OSError:
            return None
        try:
            return msgspec.json.decode(raw, type=StatusSnapshot)
        except msgspec.ValidationError:
            return None
        except msgspec.DecodeError:
            return None
