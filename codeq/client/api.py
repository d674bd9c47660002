"""What every client transport shares: the error type and the JSON shapes."""

from __future__ import annotations

from typing import Any

# Tasks, results and admin answers travel as codeQ's wire objects (camelCase keys,
# as the README's HTTP API documents them); the client does not remodel them.
JsonObject = dict[str, Any]

TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


class CodeqError(Exception):
    """A request codeq refused (status is the HTTP status) or could not be made
    (status 0: connection refused, timeout, a reply that is not JSON)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status = status
        self.message = message
        self.body = body

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed later (unreachable, 429, 503)."""
        return self.status in (0, 429, 502, 503, 504)

    @property
    def retry_after(self) -> float | None:
        """The server's hint for a 429 (its `retryAfterSeconds`), if any."""
        if isinstance(self.body, dict):
            value = self.body.get("retryAfterSeconds")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        return None
