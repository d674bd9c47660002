"""A listening Unix socket for the HTTP transport (unixSocketPath): created never more
open than its configured mode, a stale one left by a dead daemon replaced, a live one
or a non-socket path refused, removed at shutdown."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
from dataclasses import dataclass


class ListenError(Exception):
    """A listener cannot be set up; the message names the config key to look at."""


@dataclass(frozen=True, slots=True)
class UnixListener:
    """A bound, listening Unix socket and the file it made (to remove only that one)."""

    sock: socket.socket
    path: str
    inode: tuple[int, int]  # (st_dev, st_ino) of the socket file

    @property
    def address(self) -> str:
        return f"unix://{self.path}"

    def close(self) -> None:
        """Closes the socket and removes its file, unless another process replaced it."""
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.inode:
                os.unlink(self.path)


def listen_unix(path: str, mode: int, group: str | None, backlog: int = 128) -> UnixListener:
    """Binds and listens on `path` with permissions `mode` and group `group`."""
    _clear_stale(path)
    gid = _gid(group) if group is not None else None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # bind() creates the file as 0777 & ~umask: owner-only until chown/chmod below,
        # so no other user can connect even for an instant. The umask is process-wide,
        # hence restored at once.
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        if gid is not None:
            os.chown(path, -1, gid)  # before chmod: the group bits are for this group only
        os.chmod(path, mode)
        st = os.lstat(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"config key 'unixSocketPath': cannot listen on {path}: {exc}") from exc
    return UnixListener(sock, path, (st.st_dev, st.st_ino))


def _clear_stale(path: str) -> None:
    """Removes a socket file nobody listens on; refuses a live socket or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(
            f"config key 'unixSocketPath': {path} exists and is not a socket; "
            "remove it or choose another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # left by a daemon that died: nobody listens
        return
    except BlockingIOError:
        pass  # a listener whose backlog is full: alive
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise ListenError(
                f"config key 'unixSocketPath': cannot check whether {path} is in use: {exc}"
            ) from exc
    finally:
        probe.close()
    raise ListenError(
        f"config key 'unixSocketPath': another process is listening on {path} "
        "(another codeq daemon?); stop it or choose another path"
    )


def _gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ListenError(f"config key 'unixSocketGroup': no group named {group!r}") from None
