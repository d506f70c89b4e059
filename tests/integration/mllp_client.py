"""MLLP test clients and peers for the integration tests (not a test module).

- `start_listener` / `start_bridge`: `rxgate mllp` / `rxgate bridge` as subprocesses, returned once ready.
- `read_frames`: a raw-socket reader of framed answers.
- `ReplyPeer`: an interface engine's reply listener (what RXGATE_MLLP_REPLY_TO points at): it records
  every frame it receives and acknowledges each with an `ACK` whose MSA-1 the test chooses (in turn).
- `with_modes`: a message with MSH-15/MSH-16 set.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from tests.integration.conftest import Procs, client, names
from workers.queue.embedded import free_port

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def framed(text: str) -> bytes:
    return VT + text.encode() + FS + CR


def with_modes(text: str, accept: str, application: str) -> str:
    """`text` with MSH-15 (accept acknowledgment type) and MSH-16 (application acknowledgment type) set."""
    lines = text.split("\r")
    fields = lines[0].split("|")
    fields += [""] * (16 - len(fields))
    fields[14], fields[15] = accept, application  # fields[n - 1] is MSH-n
    lines[0] = "|".join(fields)
    return "\r".join(lines)


def wait_listening(port: int, procs: Procs, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return port
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the MLLP listener did not start:\n" + procs.logs()[-3000:])


def start_listener(procs: Procs, timeout: float = 20.0, *args: str, env: dict[str, str] | None = None) -> int:
    port = free_port()
    procs.start("mllp", "--port", str(port), "--timeout", str(timeout), *args, env=env)
    return wait_listening(port, procs)


def start_bridge(procs: Procs, env) -> None:
    procs.start("bridge")
    r = client(env)
    inbound = names(env)[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the consumer group exists once the bridge is reading
        try:
            if r.xinfo_groups(inbound):
                return
        except Exception:  # noqa: BLE001 - stream not created yet
            pass
        time.sleep(0.05)
    raise AssertionError("the bridge did not start")


def read_frames(sock: socket.socket, n: int, timeout: float = 30.0) -> list[str]:
    """Read `n` framed answers (or fewer if the server closes)."""
    sock.settimeout(timeout)
    buf, out = b"", []
    while len(out) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        while FS + CR in buf:
            end = buf.index(FS + CR)
            assert buf[:1] == VT, buf[:20]
            out.append(buf[1:end].decode())
            buf = buf[end + 2:]
    assert buf == b"", "bytes after the last frame"
    return out


def segment(response: str, name: str) -> list[str]:
    return next(s for s in response.split("\r") if s.startswith(name + "|")).split("|")


def ack(response: str) -> tuple[str, str]:
    """(MSA-1, MSA-2)."""
    msa = segment(response, "MSA")
    return msa[1], msa[2]


def peer_ack(control_id: str, code: str) -> str:
    return (f"MSH|^~\\&|PHARMSYS|GENHOSP|RXGATE|GENHOSP|20261201090000||ACK|P{control_id}|P|2.5.1\r"
            f"MSA|{code}|{control_id}\r")


class ReplyPeer:
    """A reply listener on 127.0.0.1:`port`: records frames; acknowledges each with MSA-1 from `answers`
    (one per frame in turn, the last repeated). `tls`: a server context (the peer speaks TLS)."""

    def __init__(self, port: int | None = None, answers: tuple[str, ...] = ("CA",),
                 tls: ssl.SSLContext | None = None):
        self.answers = list(answers)
        self.tls = tls
        self.frames: list[str] = []
        self.connections = 0
        self.cond = threading.Condition()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port or 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            with self.cond:
                self.connections += 1
            buf = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while FS + CR in buf:
                    end = buf.index(FS + CR)
                    text = buf[buf.index(VT) + 1:end].decode()
                    buf = buf[end + 2:]
                    with self.cond:
                        self.frames.append(text)
                        code = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                        self.cond.notify_all()
                    conn.sendall(framed(peer_ack(ack(text)[1], code)))
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def wait_for(self, n: int, timeout: float = 30.0) -> list[str]:
        """The first `n` frames received (AssertionError after `timeout` seconds)."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.frames) >= n, timeout):
                raise AssertionError(f"the reply peer got {len(self.frames)} frame(s), expected {n}")
            return list(self.frames)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
