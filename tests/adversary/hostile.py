"""A toolkit for hostile peers: real Noise handshakes, then whatever bytes an attacker likes.

`Hostile` is a blocking-socket client that runs the project's own sans-IO `PeerConnection`
(initiator side) until the handshake is done, and then lets a test write transport records of
any size and content, request frames without ever reading the answers, or make ordinary calls.
Every access to `PeerConnection` internals is in `encrypt_record`, so one function adapts when
they change.

`Watcher` is a well-behaved peer (its own event loop thread, `peercloud.net.link.dial`) that
pings the target every 100 ms and records the worst round trip and every failure: the "does the
daemon still answer a third peer" check.

The rest reads a daemon process from the outside: RSS, CPU seconds, and the size of its index.
"""

import asyncio
import contextlib
import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from peercloud.identity import Identity
from peercloud.net.link import Address, PeerError, PeerLink, dial
from peercloud.wire import connection as c
from peercloud.wire import frames, noise
from peercloud.wire import messages as m
from peercloud.wire.records import LENGTH

HELLO = m.Hello(m.PROTOCOL_VERSION, ("blocks", "have", "cloud", "audit"), "hostile")
RECORD_MAX = noise.MAX_MESSAGE - noise.TAGLEN  # plaintext bytes that fit one transport record
MiB = 1024 * 1024
ATTACKER = "127.0.0.2"  # hostile peers connect from here; watchers and fresh peers from 127.0.0.1

# -- the one place that knows PeerConnection's internals


def encrypt_record(conn: c.PeerConnection, plaintext: bytes | memoryview) -> bytes:
    """One transport record (u16 length | ciphertext) for `plaintext`, on `conn`'s send key.

    Uses (and advances) the connection's own send CipherState, so records made here and frames
    the connection sends itself (`request`, pong answers) interleave with consistent nonces.
    """
    cipher = conn._send
    if cipher is None:
        raise RuntimeError("the handshake is not complete: no send key yet")
    ciphertext = cipher.encrypt(b"", plaintext)
    return LENGTH.pack(len(ciphertext)) + ciphertext


# -- frames and records


def frame_bytes(msg: m.Message, payload: bytes | memoryview = b"") -> bytes:
    """A whole frame as one buffer."""
    return b"".join(frames.encode_frame(msg, payload))


def frame_head(msg: m.Message, payload_length: int) -> bytes:
    """The start of a frame (u32 body length | u16 header length | header) announcing
    `payload_length` payload bytes, without them."""
    header = m.encode_header(msg)
    return (2 + len(header) + payload_length).to_bytes(4, "big") + len(header).to_bytes(2, "big") + header


def records(conn: c.PeerConnection, stream: bytes | memoryview, size: int = RECORD_MAX) -> bytes:
    """`stream` cut into transport records of `size` plaintext bytes (the last may be shorter)."""
    if not 0 < size <= RECORD_MAX:
        raise ValueError(f"record size must be 1..{RECORD_MAX}")
    view = memoryview(stream)
    return b"".join(encrypt_record(conn, view[i : i + size]) for i in range(0, len(view), size))


# -- the hostile client


def loopback_sources(count: int, first: int = 2) -> list[str]:
    """Source addresses 127.0.0.<first>, 127.0.0.<first + 1>, … (all of 127/8 is loopback on Linux)."""
    return [f"127.0.0.{first + i}" for i in range(count)]


def address_of(daemon: Any) -> tuple[str, int]:
    """(host, port) of a daemon's peer listener."""
    a = Address.parse(daemon.state["listen"][0])
    return a.host, a.port


class PeerClosed(Exception):
    """The other side closed the connection (EOF, reset, broken pipe)."""


class Hostile:
    """A blocking-socket peer that completes the real handshake and then sends what it likes.

    `rcvbuf` sets SO_RCVBUF before connecting (a small one makes a client that stops reading
    push back on the daemon at once). `source` binds a source address in 127.0.0.0/8.
    """

    def __init__(
        self,
        address: tuple[str, int],
        identity: Identity | None = None,
        *,
        source: str | None = None,
        rcvbuf: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.identity = identity or Identity.generate()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.closed_at: float | None = None  # monotonic time we saw the peer close
        self.events: list[c.Event] = []
        try:
            if rcvbuf is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source is not None:
                self.sock.bind((source, 0))
            self.sock.settimeout(timeout)
            self.sock.connect(address)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn = c.PeerConnection(True, self.identity, HELLO, time.monotonic())
            self._handshake(timeout)
        except BaseException:
            self.sock.close()
            raise

    @property
    def peer_id(self) -> str:
        """Our peer ID as text."""
        return str(self.identity.peer_id)

    def _handshake(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.flush()
        while self.conn.state is c.State.HANDSHAKE:
            if time.monotonic() > deadline:
                raise TimeoutError("handshake did not complete")
            self._read_once(max(0.01, deadline - time.monotonic()))
            self.flush()
        if self.conn.state is not c.State.OPEN:
            raise PeerClosed(f"handshake failed: {self.events}")

    # -- sending

    def send(self, data: bytes | memoryview, timeout: float = 20.0) -> None:
        """Write raw bytes (records already encrypted); raises PeerClosed or TimeoutError."""
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(view)} bytes still unsent after {timeout:.0f} s")
            self.sock.settimeout(min(remaining, 1.0))
            try:
                sent = self.sock.send(view[: 256 * 1024])
            except TimeoutError:
                continue
            except OSError as e:  # EPIPE, ECONNRESET: the peer closed on us
                self._mark_closed()
                raise PeerClosed(str(e)) from None
            view = view[sent:]

    def flush(self) -> None:
        """Send what the state machine queued (handshake messages, pong answers, requests)."""
        data = b"".join(self.conn.data_to_send())
        if data:
            self.send(data)

    def send_frame(self, msg: m.Message, payload: bytes | memoryview = b"", record_size: int = RECORD_MAX) -> None:
        """One frame, cut into records of `record_size` plaintext bytes."""
        self.send(records(self.conn, frame_bytes(msg, payload), record_size))

    def send_frames(self, msgs: Iterable[m.Message], record_size: int = RECORD_MAX, timeout: float = 20.0) -> None:
        """Many frames back to back (packed into full records), without reading anything."""
        stream = b"".join(frame_bytes(msg) for msg in msgs)
        self.send(records(self.conn, stream, record_size), timeout)

    # -- receiving

    def _mark_closed(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()

    def _read_once(self, timeout: float) -> bool:
        """Read what arrives within `timeout` into the state machine; False on EOF."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1024 * 1024)
        except TimeoutError:
            return True
        except OSError:
            data = b""
        if not data:
            self._mark_closed()
            self.conn.connection_lost()
            self._collect()
            return False
        self.conn.receive_data(data, time.monotonic())
        self._collect()
        return True

    def _collect(self) -> None:
        while (event := self.conn.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, c.Closed):
                self._mark_closed()

    def pump(self, seconds: float) -> None:
        """Read (answering the daemon's pings, ignoring the rest) for `seconds`, or until EOF."""
        deadline = time.monotonic() + seconds
        while self.closed_at is None and (left := deadline - time.monotonic()) > 0:
            self._read_once(min(left, 0.2))
            if self.closed_at is None and self.conn.state is c.State.OPEN:
                with contextlib.suppress(PeerClosed, TimeoutError):
                    self.flush()

    def call(self, msg: m.Request, timeout: float = 20.0) -> m.Message:
        """A request answered in order; reads (and drops) everything else meanwhile."""
        self.conn.request(msg, time.monotonic(), timeout)
        self.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events):
                if isinstance(event, c.Response) and event.request_id == msg.id:
                    del self.events[i]
                    return event.message
                if isinstance(event, c.Timeout) and event.request_id == msg.id:
                    raise TimeoutError(f"no answer to {msg.TYPE}")
            if self.closed_at is not None:
                raise PeerClosed(f"closed while waiting for the answer to {msg.TYPE}")
            self._read_once(0.2)
            self.conn.handle_timer(time.monotonic())
            self._collect()
            with contextlib.suppress(TimeoutError):
                self.flush()
        raise TimeoutError(f"no answer to {msg.TYPE} within {timeout:.0f} s")

    def ping(self, timeout: float = 20.0) -> float:
        """Round trip of one ping on this connection (proves everything sent before it was read)."""
        start = time.perf_counter()
        answer = self.call(m.Ping(self.conn.new_id()), timeout)
        assert isinstance(answer, m.Pong), answer
        return time.perf_counter() - start

    def wait_closed(self, timeout: float) -> bool:
        """Read until the peer closes (True) or `timeout` passes (False)."""
        self.pump(timeout)
        return self.closed_at is not None

    def closed_by_peer(self) -> bool:
        """Without blocking: has the peer closed (EOF or reset waiting on the socket)?"""
        if self.closed_at is None:
            self._read_once(0.001)
        return self.closed_at is not None

    def close(self) -> None:
        """Drop the socket (no goodbye)."""
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> "Hostile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def handshake_seconds(address: tuple[str, int], timeout: float = 10.0) -> float:
    """Seconds for a fresh outsider to connect, handshake and get a pong; raises if it cannot."""
    start = time.perf_counter()
    with Hostile(address, timeout=timeout) as h:
        h.ping(timeout)
    return time.perf_counter() - start


def idle_sockets(
    address: tuple[str, int], sources: Iterable[str], timeout: float = 5.0
) -> tuple[list[socket.socket], int]:
    """Connect one socket per source address given (repeat an address for several); send nothing.

    The connects run in parallel (non-blocking) and all end within `timeout`, however the
    listener behaves. Returns the connected sockets and how many connects failed.
    """
    pending: dict[socket.socket, str] = {}
    failed = 0
    for source in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setblocking(False)
            s.bind((source, 0))
            err = s.connect_ex(address)
        except OSError:
            err = -1
        if err not in (0, errno.EINPROGRESS):
            s.close()
            failed += 1
        else:
            pending[s] = source
    connected: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for s in pending:
            sel.register(s, selectors.EVENT_WRITE)
        while pending and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                sel.unregister(s)
                del pending[s]
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected.append(s)
                else:
                    s.close()
                    failed += 1
    for s in pending:  # still connecting at the deadline
        s.close()
        failed += 1
    return connected, failed


def closed_by_peer(s: socket.socket) -> bool:
    """Without blocking: has the other side of a socket we never write to closed it?"""
    s.setblocking(False)
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# -- the well-behaved third peer


@dataclass
class WatchReport:
    """What a Watcher saw."""

    pings: int = 0
    worst: float = 0.0  # seconds: the slowest answer, or how long a failed ping waited
    failures: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.pings} pings, worst {self.worst * 1000:.0f} ms, {len(self.failures)} failures {self.failures[:3]}"
        )


class Watcher:
    """A well-behaved outside peer connected before an attack, pinging the target every `interval`.

    `check()` asserts every ping was answered and the worst round trip stayed under `max_rtt`.
    """

    def __init__(self, daemon: Any, interval: float = 0.1, timeout: float = 5.0) -> None:
        self.address = Address.parse(daemon.state["listen"][0])
        self.interval = interval
        self.timeout = timeout
        self.identity = Identity.generate()
        self.report = WatchReport()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._stopping: asyncio.Event | None = None
        self._link: PeerLink | None = None
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        deadline = time.monotonic() + 15
        while self._link is None and not self._task.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._link is None:
            self.stop()
            raise AssertionError(f"the watcher could not connect: {self.report}")

    async def _dial(self) -> PeerLink:
        async def on_request(link: PeerLink, msg: m.Message) -> None:
            if isinstance(msg, m.Request) and not isinstance(msg, m.Ping):
                link.respond(msg.id, m.Error(msg.id, "not_found", "a watcher holds nothing"))

        return await dial(self.address, self.identity, HELLO, on_request, timeout=self.timeout)

    async def _run(self) -> None:
        self._stopping = asyncio.Event()
        try:
            self._link = await self._dial()
        except PeerError as e:
            self.report.failures.append(f"dial: {e}")
            return
        while not self._stopping.is_set():
            start = time.perf_counter()
            try:
                if self._link.conn.state is not c.State.OPEN:
                    self._link = await self._dial()  # counted below as the failure that closed it
                await self._link.ping(self.timeout)
            except PeerError as e:
                self.report.failures.append(f"{time.strftime('%X')} {e}")
            elapsed = time.perf_counter() - start
            self.report.pings += 1
            self.report.worst = max(self.report.worst, elapsed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(0.0, self.interval - elapsed))
        self._link.close("watcher done")
        await asyncio.sleep(0.05)

    def stop(self) -> WatchReport:
        """Stop pinging (letting the ping in flight finish) and close; returns the report (idempotent)."""
        if self._loop.is_closed():
            return self.report
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        with contextlib.suppress(Exception):
            self._task.result(self.timeout + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
        return self.report

    def problems(self, max_rtt: float = 2.0) -> list[str]:
        """What broke the bound "every ping answered, the worst under `max_rtt` seconds"."""
        r = self.report
        out = []
        if r.pings == 0:
            out.append("the watcher sent no ping")
        if r.failures:
            out.append(f"{len(r.failures)} of the watcher's pings failed: {r.failures[:3]}")
        if r.worst >= max_rtt:
            out.append(f"the watcher's worst ping took {r.worst:.2f} s (bound {max_rtt} s)")
        return out

    def check(self, max_rtt: float = 2.0) -> None:
        """Assert every ping answered, the worst under `max_rtt` seconds."""
        problems = self.problems(max_rtt)
        assert not problems, f"{problems}: {self.report}"

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# -- a daemon seen from outside


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads (utime + stime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def index_bytes(home: Path) -> int:
    """index.sqlite plus its write-ahead log."""
    return sum(p.stat().st_size for p in (home / "index.sqlite", home / "index.sqlite-wal") if p.exists())


def wait_quiet(pid: int, timeout: float = 20.0, window: float = 0.5, busy: float = 0.1) -> bool:
    """Wait until the process uses less than `busy` CPU seconds in a `window`; False on timeout."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = cpu_seconds(pid)
        if now - last < busy:
            return True
        last = now
    return False


class RssSampler:
    """Samples a process's RSS in the background; `peak` is the largest seen."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid = pid
        self.start = rss_bytes(pid)
        self.peak = self.start
        self._every = every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._every):
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        """Stop sampling; the peak RSS in bytes."""
        self._done.set()
        self._thread.join(2)
        with contextlib.suppress(OSError, AssertionError):
            self.peak = max(self.peak, rss_bytes(self.pid))
        return self.peak


@contextlib.contextmanager
def killed_if_stuck(daemon: Any, address: tuple[str, int], timeout: float = 5.0) -> Iterator[None]:
    """After the block: a daemon that cannot complete a fresh handshake in `timeout` is SIGKILLed.

    A daemon whose loop is stuck would not stop on SIGTERM within the fixture's wait; killing
    it (exit -9, which the fixture accepts) keeps the test bounded. Assertions inside the block
    still report what failed.
    """
    try:
        yield
    finally:
        if daemon.proc.poll() is None:
            try:
                handshake_seconds(address, timeout)
            except Exception:
                daemon.kill()


def poll(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    """Like tests.daemons.wait_for, but gentle: each try may spawn a CLI, and the machine has 2 cores."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def mib(n: int) -> str:
    """Bytes as MiB for messages."""
    return f"{n / MiB:.1f} MiB"


def closed_reason(daemon: Any, peer_id: str) -> str | None:
    """Why the daemon's log says it closed its connection to `peer_id` (None: it did not)."""
    short = f"connection {peer_id[:13]} closed: "
    log = (daemon.home / "daemon.log").read_text(errors="replace")
    lines = [line for line in log.splitlines() if short in line]
    return lines[-1].split(short, 1)[1] if lines else None


class Findings:
    """Figures measured during an attack and the bounds they broke, checked once at the end.

    Every figure is printed on one line (run pytest with -s to see them) and repeated in the
    assertion message, so a failing run says how far off it was, not only that it was.
    """

    def __init__(self, attack: str) -> None:
        self.attack = attack
        self.figures: dict[str, object] = {}
        self.problems: list[str] = []

    def figure(self, name: str, value: object) -> None:
        """Record a measurement."""
        self.figures[name] = value

    def require(self, ok: bool, problem: str) -> None:
        """Record a broken bound unless `ok`."""
        if not ok:
            self.problems.append(problem)

    def extend(self, problems: Iterable[str]) -> None:
        """Record several broken bounds."""
        self.problems.extend(problems)

    def line(self) -> str:
        """The figures as one line."""
        return f"ADVERSARY {self.attack}: " + ", ".join(f"{k}={v}" for k, v in self.figures.items())

    def check(self) -> None:
        """Print the figures and fail with every broken bound."""
        print(self.line())
        assert not self.problems, "\n  ".join([f"{self.attack}: bounds broken:", *self.problems, self.line()])
