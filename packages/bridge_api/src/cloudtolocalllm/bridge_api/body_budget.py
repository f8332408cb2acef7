"""What one account's JSON bodies may make this api-backend hold at once.

JSON bodies are read whole (to route by the model they name and to check that they are JSON), so they are
the one place where a client decides how much memory the shared server holds. Each account has a budget of
bytes in flight: a body reserves its announced length (its Content-Length) before a byte is read, or its
chunks as they arrive when it has none, and gives everything back when its request ends. A body that does not
fit is refused with ``429`` and ``Retry-After``; the account's other requests go on.
"""

from __future__ import annotations

from typing import Final

from cloudtolocalllm.bridge_api.errors import RelayError

__all__ = ["BodyBudget", "Reservation"]

_RETRY_AFTER_S: Final = 1.0


class BodyBudget:
    def __init__(self, per_account_bytes: int) -> None:
        self.per_account_bytes = per_account_bytes
        self._held: dict[str, int] = {}

    def held(self, account: str) -> int:
        return self._held.get(account, 0)

    def reservation(self, account: str) -> Reservation:
        return Reservation(self, account)

    def take(self, account: str, size: int) -> None:
        held = self._held.get(account, 0)
        if held + size > self.per_account_bytes:
            raise RelayError(
                429,
                f"too much JSON in flight for this account: at most {self.per_account_bytes} bytes of request "
                "bodies at once; retry when earlier requests have finished",
                retry_after_s=_RETRY_AFTER_S,
            )
        self._held[account] = held + size

    def give_back(self, account: str, size: int) -> None:
        left = self._held.get(account, 0) - size
        if left > 0:
            self._held[account] = left
        else:
            self._held.pop(account, None)


class Reservation:
    """One request's share of its account's budget; a context manager that gives it all back on exit."""

    def __init__(self, budget: BodyBudget, account: str) -> None:
        self.budget = budget
        self.account = account
        self.size = 0

    def take(self, size: int) -> None:
        """Reserve ``size`` more bytes (``RelayError`` 429 when the account has not that much left)."""
        self.budget.take(self.account, size)
        self.size += size

    def grow_to(self, size: int) -> None:
        """Hold at least ``size`` bytes in all (a body read chunk by chunk, or past what it announced)."""
        if size > self.size:
            self.take(size - self.size)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.budget.give_back(self.account, self.size)
        self.size = 0
