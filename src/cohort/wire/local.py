"""Messages between two processes on one host, over a Unix seqpacket socket.

ZeroMQ hands every message to an I/O thread on each side; on a small machine
those two thread wake-ups per hop cost more than the rest of a small call
(a 200-byte ping-pong here: ~75 µs over zmq, ~22 µs over this). The direct
path between a client and an engine on one host (see `cohort.client.direct`)
uses this instead: the sender's own thread writes, the receiver's own thread
reads.

A record is one message: ``[count][length]*count`` (unsigned 32-bit, network
order), then the frames. Seqpacket sockets keep records whole, so any thread
may send or receive one, and a send that does not fit fails at once
(``MSG_DONTWAIT``) instead of blocking: the caller then takes the usual way.
Addresses are Linux abstract socket names (``local:@name``), gone with the
socket that bound them; they have no file permissions, so a listener accepts
only processes of its own user (``SO_PEERCRED``), and every message is
signed as on any other socket.
"""

from __future__ import annotations

import os
import socket
import struct

RECORD_MAX = 128 * 1024  # bytes a message may have to travel this way
PREFIX = "local:@"
_U32 = struct.Struct("!I")
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def supported() -> bool:
    return hasattr(socket, "AF_UNIX") and hasattr(socket, "SOCK_SEQPACKET") and \
        os.uname().sysname == "Linux"


def listen() -> tuple:
    """(a listening socket, its address), or (None, None) where unsupported."""
    if not supported():
        return None, None
    name = f"cohort-{os.getpid()}-{os.urandom(6).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind("\0" + name)
    sock.listen(1024)  # clients that left while the engine was busy wait here unaccepted
    sock.setblocking(False)
    return sock, PREFIX + name


def accept(listener) -> list:
    """The connections waiting on `listener`, non-blocking; only from processes of
    this user (an abstract name has no file permissions to keep others out)."""
    out = []
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # none waiting (BlockingIOError), or out of descriptors
            return out
        if peer_uid(conn) != os.geteuid():
            conn.close()
            continue
        conn.setblocking(False)
        _grow_buffers(conn)
        out.append(conn)


def peer_uid(conn) -> int | None:
    """The user id of the process at the other end of a Unix socket."""
    try:
        _pid, uid, _gid = _CRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    except (OSError, AttributeError):
        return None
    return uid


def connect(address: str):
    """A connected socket to `address`, or None (not local, or nobody listens)."""
    if not (supported() and isinstance(address, str) and address.startswith(PREFIX)):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)  # a full backlog (a busy engine) refuses at once, never waits
    try:
        sock.connect("\0" + address[len(PREFIX):])
    except OSError:
        sock.close()
        return None
    _grow_buffers(sock)
    return sock


def _grow_buffers(sock) -> None:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * RECORD_MAX)
        except OSError:
            pass


def send(sock, frames) -> bool:
    """Send one message (its frames) without waiting; False if it must go another
    way: too large, no room now (the reader is busy), or the peer is gone."""
    sizes = [memoryview(f).nbytes for f in frames]
    if sum(sizes) > RECORD_MAX:
        return False
    try:
        sock.sendmsg([struct.pack(f"!{len(sizes) + 1}I", len(sizes), *sizes), *frames], [],
                     socket.MSG_DONTWAIT)
    except OSError:  # no room now, too large, the peer gone, the socket closed
        return False
    return True


def receive(sock, most: int = 1 << 30) -> tuple:
    """(the messages waiting on `sock`, each a frame list; False if the peer closed).

    `most`: stop after that many (a reader that polls again anyway saves the
    failed read that would say none is left)."""
    out = []
    while len(out) < most:
        try:
            data = sock.recv(RECORD_MAX + 65536)
        except (BlockingIOError, InterruptedError):
            return out, True
        except OSError:
            return out, False
        if not data:
            return out, False
        frames = _split(data)
        if frames is not None:
            out.append(frames)
    return out, True


def _split(data: bytes):
    """The frames of one record, or None if it is malformed (dropped)."""
    view = memoryview(data)
    try:
        (count,) = _U32.unpack_from(view, 0)
        pos = 4 + 4 * count
        if count > 1024 or pos > len(view):
            return None
        frames = []
        for n in struct.unpack_from(f"!{count}I", view, 4):
            frames.append(view[pos:pos + n])
            pos += n
        if pos != len(view):
            return None
        return frames
    except struct.error:
        return None
