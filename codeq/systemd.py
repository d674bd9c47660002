"""The systemd notify protocol, without a dependency: READY/STATUS/STOPPING/WATCHDOG
datagrams to $NOTIFY_SOCKET (see sd_notify(3)), and the watchdog interval from
$WATCHDOG_USEC / $WATCHDOG_PID (see sd_watchdog_enabled(3)).

Outside systemd (no $NOTIFY_SOCKET) every call is a no-op. Sending never blocks the
event loop: the socket is non-blocking, and a datagram the manager cannot take is
dropped; the first failure is logged, later ones are not, and none is raised.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("codeq.systemd")


class NotifySocket:
    """The service manager's notification socket: one AF_UNIX datagram per message."""

    def __init__(self, address: str) -> None:
        # A leading '@' names a socket in the abstract namespace (a leading NUL byte).
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        self._failed_before = False

    def send(self, *lines: str) -> bool:
        """Sends the lines as one message ("READY=1", "STATUS=…"); False if it was not sent."""
        message = "\n".join(lines).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed_before:
                self._failed_before = True
                log.warning(
                    "systemd notification failed; later failures are not logged",
                    socket=self.address.replace("\0", "@"),
                    error=str(exc),
                )
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@functools.cache
def _manager_socket() -> NotifySocket | None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    return NotifySocket(address) if address else None


def notify(*lines: str) -> bool:
    """Tells the service manager the lines (sd_notify); a no-op without $NOTIFY_SOCKET."""
    sock = _manager_socket()
    return sock.send(*lines) if sock is not None else False


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when the
    watchdog is off, or meant for another process ($WATCHDOG_PID is not ours)."""
    environ = os.environ if environ is None else environ
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec:
        return None
    try:
        if pid and int(pid) != os.getpid():
            return None
        interval = int(usec) / 2 / 1_000_000
    except ValueError:
        log.warning("ignoring a malformed watchdog setting", WATCHDOG_USEC=usec, WATCHDOG_PID=pid)
        return None
    return interval if interval > 0 else None
