"""Who is on the other end of the control socket, and whether they may use it.

The kernel tells us the peer's uid/gid/pid (SO_PEERCRED), which no client can forge. Root, the
service's own user and members of the control group get in; everyone else is refused even if the
socket file's mode were loosened. uvicorn does not expose the connection's socket to the app, so a
small protocol subclass reads the credentials when the connection is made and hands them to the
app through the request's state.
"""

import grp
import logging
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("appliance.control")


@dataclass(frozen=True)
class Peer:
    uid: int
    gid: int
    pid: int
    groups: frozenset[int]  # primary and supplementary

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Peer(uid, gid, pid, frozenset({gid}) | _supplementary_groups(pid, uid, gid))


def _supplementary_groups(pid: int, uid: int, gid: int) -> frozenset[int]:
    """The peer process's own group list (what it runs with now), else its user's from /etc/group."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    try:
        return frozenset(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        return frozenset()


class AccessPolicy:
    """Root, the service's own uid, and members of `group` (if it exists) may use the socket."""

    def __init__(self, group: str):
        self.group = group
        try:
            self.gid: int | None = grp.getgrnam(group).gr_gid
        except KeyError:
            self.gid = None
        self.own_uid = os.getuid()

    def refusal(self, peer: Peer | None) -> str | None:
        """None when the peer may come in; else the message that tells them what to do."""
        if peer is None:
            return "the control socket could not identify the caller"
        if peer.uid in (0, self.own_uid) or (self.gid is not None and self.gid in peer.groups):
            return None
        return (f"access refused: user {peer.user} (uid {peer.uid}) is not root and not in the {self.group} group; "
                f"add yourself to the {self.group} group (sudo usermod -aG {self.group} {peer.user}, then log in again)")


class PeerCredentialsProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol that records the connection's peer in each request's state."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        try:
            peer = peer_of(sock) if sock is not None else None
        except OSError as e:
            log.warning("could not read the control peer's credentials: %s", e)
            peer = None
        # A per-connection copy: uvicorn copies app_state into every request's scope["state"].
        self.app_state = {**self.app_state, "peer": peer}


def bind_control_socket(path: Path, group: str) -> socket.socket:
    """A listening Unix socket at path, mode 0660, group `group` where we may set it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: left by a process that died
        else:
            raise OSError(f"another process already serves the control socket {path}; stop it first")
        finally:
            probe.close()
    elif path.exists():
        raise OSError(f"{path} exists and is not a socket; remove it or choose another control_socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)  # never world-accessible, not even between bind and chmod
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o660)
    try:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except (KeyError, PermissionError):
        pass  # no such group (development) or not ours to give: the file keeps our primary group
    sock.listen(128)
    sock.setblocking(False)
    return sock
