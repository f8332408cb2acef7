"""The login's stored credentials, and the token source that keeps them fresh.

``cloudtolocalllm-bridge login`` writes ``credentials.json`` in the state dir (``$XDG_CONFIG_HOME/
cloudtolocalllm/bridge`` by default): the access token, its expiry, the refresh token and where they came
from (issuer, client id, audience, token endpoint). The file is created 0600 in a 0700 directory and always
replaced atomically (temp file + rename), so a reader never sees half of it.

:class:`StoredCredentialsSource` gives ``run`` the cached access token while it is fresh and, once it is
close to expiry (past half its lifetime, or within the reauth margin), trades the refresh token for new
tokens, persisting the rotated refresh token before it returns. Refreshes of the same file are serialised
across processes with a lock file, and a process re-reads the file first, so two bridges sharing a login
do not present the same (already rotated) refresh token twice. Tokens are never logged: only fingerprints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from cloudtolocalllm.bridge.oauth import IssuerUnreachable, OAuthError, issuer_session, refresh_tokens
from cloudtolocalllm.bridge.token import (
    KEY_ENV,
    SignInRefused,
    TokenError,
    TokenSource,
    fingerprint,
    unverified_expiry,
)

__all__ = [
    "CREDENTIALS_FILE",
    "Credentials",
    "StoredCredentialsSource",
    "delete_credentials",
    "load_credentials",
    "save_credentials",
    "sign_in_hint",
    "token_expiry",
    "write_private_file",
]

logger = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"
LOGIN_HINT = "run `cloudtolocalllm-bridge login`"


def sign_in_hint(cloud_url: str = "") -> str:
    """The one line that tells the user how to sign in again (the cloud's URL when it is known)."""
    return f"sign in again with: cloudtolocalllm-bridge login {cloud_url or '<cloud URL>'}"


_MAX_BYTES = 256 * 1024
_FORCED_REFRESH_EVERY_S = 60.0
_RETRY_CAP_S = 60.0


class Credentials(msgspec.Struct, kw_only=True, frozen=True):
    issuer: str
    client_id: str
    audience: str
    token_endpoint: str
    access_token: str
    expires_at: float
    """Wall-clock (epoch) time the access token expires."""
    obtained_at: float
    refresh_token: str | None = None
    scope: str = ""
    version: int = 1


def token_expiry(access_token: str, announced: float) -> float:
    """When the token expires: ``expires_in`` as announced, or the JWT's ``exp`` if that is earlier."""
    exp = unverified_expiry(access_token)
    return min(announced, exp) if exp is not None else announced


def load_credentials(path: Path) -> Credentials | None:
    """The stored credentials, None if there are none. TokenError if the file is unreadable or corrupt."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenError(f"cannot read the stored login {path}: {exc.strerror}") from None
    try:
        return msgspec.json.decode(raw, type=Credentials)
    except msgspec.DecodeError:
        raise TokenError(f"the stored login {path} is damaged: {LOGIN_HINT} again") from None


def save_credentials(path: Path, credentials: Credentials) -> None:
    """Write atomically, private to the user (see :func:`write_private_file`)."""
    write_private_file(path, msgspec.json.encode(credentials))


def write_private_file(path: Path, data: bytes) -> None:
    """Write atomically: a 0600 temp file in the same 0700 directory, fsynced, then renamed over ``path``."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(directory.stat().st_mode) & 0o077:
        os.chmod(directory, 0o700)
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def delete_credentials(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


@contextlib.asynccontextmanager
async def _file_lock(path: Path, timeout_s: float = 30.0) -> AsyncIterator[None]:
    """An exclusive lock on ``<path>.lock`` across processes (POSIX flock; nothing on Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TokenError(f"another process holds {path}.lock for too long") from None
                await asyncio.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class StoredCredentialsSource(TokenSource):
    """The access token from ``login``'s credentials file, refreshed with its refresh token when due."""

    renews_itself = True

    def __init__(
        self, path: Path, *, margin_s: float = 30.0, http_timeout_s: float = 15.0, cloud_url: str = ""
    ) -> None:
        self.path = path
        self.cloud_url = cloud_url
        """Named in the "sign in again" advice."""
        self.token_file = None
        self.margin_s = margin_s
        self._http_timeout_s = http_timeout_s
        self._lock = asyncio.Lock()
        self._dead_refresh: set[str] = set()  # fingerprints of refresh tokens the issuer refused
        self._forced_at = -_FORCED_REFRESH_EVERY_S
        self._retry_at = 0.0
        self._failures = 0

    @property
    def can_change(self) -> bool:
        return True  # it refreshes itself, and a new `login` rewrites the file

    def describe(self) -> str:
        return f"the stored login ({self.path})"

    def renew_hint(self) -> str:
        return sign_in_hint(self.cloud_url)

    def _load(self) -> Credentials:
        credentials = load_credentials(self.path)
        if credentials is None:
            raise TokenError(
                f"no token: not logged in (no {self.path}): {LOGIN_HINT} <cloud URL>, or use a bridge key "
                f"({KEY_ENV} or --key-file FILE) on a headless machine"
            )
        with contextlib.suppress(OSError):
            self.world_readable = bool(self.path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
        return credentials

    def read(self) -> str:
        return self._load().access_token

    def due(self, credentials: Credentials, now: float | None = None) -> bool:
        """Whether the access token should be refreshed now: past half its life or within the margin."""
        now = time.time() if now is None else now
        remaining = credentials.expires_at - now
        lifetime = max(credentials.expires_at - credentials.obtained_at, 0.0)
        if remaining <= 0:
            return True
        if now - credentials.obtained_at < 0.25 * lifetime:
            return False  # a token this new is not refreshed again (no tight loop when lifetime < margin)
        return remaining <= max(0.5 * lifetime, self.margin_s)

    async def fresh(self, *, rejected: str | None = None) -> str:
        credentials = self._load()
        forced = rejected is not None and credentials.access_token == rejected
        if forced and time.monotonic() - self._forced_at < _FORCED_REFRESH_EVERY_S:
            return credentials.access_token  # refused again so soon: wait for a new login, do not hammer
        if not forced and not self.due(credentials):
            return credentials.access_token
        async with self._lock, _file_lock(self.path):
            latest = self._load()
            if latest.access_token != credentials.access_token and not self.due(latest):
                return latest.access_token  # another process (or a new login) refreshed it meanwhile
            if forced:
                self._forced_at = time.monotonic()
            return await self._refresh(latest)

    async def _refresh(self, credentials: Credentials) -> str:
        valid = credentials.expires_at > time.time()
        if not credentials.refresh_token:
            if valid:
                return credentials.access_token
            raise SignInRefused(f"the stored login expired and holds no refresh token: {self.renew_hint()}")
        refresh_fp = fingerprint(credentials.refresh_token)
        if refresh_fp in self._dead_refresh:
            raise SignInRefused(
                f"the issuer refused the stored refresh token (expired or revoked): {self.renew_hint()}"
            )
        if time.monotonic() < self._retry_at:
            if valid:
                return credentials.access_token
            raise TokenError(f"cannot reach the issuer at {credentials.issuer} to renew the login; retrying")
        try:
            async with issuer_session(self._http_timeout_s) as http:
                answer = await refresh_tokens(
                    http,
                    credentials.token_endpoint,
                    client_id=credentials.client_id,
                    refresh_token=credentials.refresh_token,
                )
        except OAuthError as exc:
            if exc.error in ("invalid_grant", "invalid_client", "unauthorized_client", "access_denied"):
                self._dead_refresh.add(refresh_fp)
                message = f"the issuer refused the stored refresh token ({exc.error}): {self.renew_hint()}"
                logger.error(message, extra={"refresh_fp": refresh_fp})
                raise SignInRefused(message) from None
            return self._unreachable(credentials, str(exc))
        except IssuerUnreachable as exc:
            return self._unreachable(credentials, str(exc))
        self._failures = 0
        now = time.time()
        renewed = msgspec.structs.replace(
            credentials,
            access_token=answer.access_token,
            expires_at=token_expiry(answer.access_token, now + answer.expires_in),
            obtained_at=now,
            refresh_token=answer.refresh_token or credentials.refresh_token,
            scope=answer.scope or credentials.scope,
        )
        save_credentials(self.path, renewed)
        logger.info(
            "renewed the login's access token",
            extra={
                "token_fp": fingerprint(renewed.access_token),
                "expires_in_s": round(answer.expires_in),
                "refresh_rotated": answer.refresh_token is not None,
            },
        )
        return renewed.access_token

    def _unreachable(self, credentials: Credentials, detail: str) -> str:
        self._failures += 1
        delay = min(2.0**self._failures, _RETRY_CAP_S)
        self._retry_at = time.monotonic() + delay
        remaining = credentials.expires_at - time.time()
        logger.warning(
            "cannot renew the login's access token (%s); retrying in %.0f s",
            detail,
            delay,
            extra={"remaining_s": remaining},
        )
        if remaining > 0:
            return credentials.access_token
        raise TokenError(f"cannot renew the login: {detail}")
