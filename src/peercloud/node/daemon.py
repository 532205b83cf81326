"""`peercloud up`: the node as a daemon — peer listener, peer links, and the REST API, one loop.

Shutdown is bounded: the first SIGINT/SIGTERM stops the API (in-flight requests get API_GRACE),
closes links and background tasks, closes the index and exits 0; HARD_DEADLINE after that
signal, or at a second one, the process exits regardless (code 128 + signal). Whatever a hard
exit interrupts is a crash the store is built to survive (docs/architecture.md, Crash safety).
"""

import asyncio
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType

import uvicorn

from peercloud.api.app import create_app
from peercloud.errors import PeercloudError
from peercloud.fsutil import write_atomic
from peercloud.net.link import Address
from peercloud.node.home import NodeHome
from peercloud.node.local import LocalNode
from peercloud.node.service import NodeService

log = logging.getLogger(__name__)
HARD_DEADLINE = 4.5  # seconds from the first signal to the exit, finished or not (promised: 5)
API_GRACE = 1  # in-flight API requests (streams too) may finish within this, then are cancelled
SERVICE_GRACE = 1.5  # closing links, the listener and background tasks
TASK_GRACE = 0.5  # tasks still running when the loop closes
THREAD_GRACE = 0.5  # worker threads still busy (an add, an fsck) once the index is closed
SIGNALS = (signal.SIGINT, signal.SIGTERM)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt parameters (glibc malloc.h)


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _hard_exit(code: int, why: str | None) -> None:
    """End the process now without joining busy threads: `why`, if given, is its last line on stderr."""
    if threading.current_thread() is threading.main_thread():  # elsewhere a flush could wait on the main thread
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a reentrant flush (signal mid-write) must not stop the exit
                stream.flush()
    if why is not None:
        with contextlib.suppress(OSError):
            os.write(2, f"peercloud: {why}; exiting now\n".encode())
    os._exit(code)


class _QuietCancel(logging.Filter):
    """Requests cut short by shutdown are expected: uvicorn would log each with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop records about a cancelled request."""
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


class Shutdown:
    """SIGINT/SIGTERM for the daemon's whole life: the first asks the loop to stop and arms the
    hard deadline, a second one exits at once.

    Python-level handlers (not loop.add_signal_handler) so a signal is seen even while the loop
    is busy or already closed, and even before `run` has created its stop event.
    """

    def __init__(self, deadline: float = HARD_DEADLINE) -> None:
        self.deadline = deadline
        self.signum: int | None = None
        self.since: float | None = None
        self.done = False  # the graceful path finished: a deadline hit while the interpreter exits is still 0
        self._wake: Callable[[], None] | None = None

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (main thread only, as Python requires)."""
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def on_request(self, wake: Callable[[], None]) -> None:
        """Call `wake` (thread-safe) when a stop is requested; at once if one already was."""
        self._wake = wake
        if self.signum is not None:
            wake()

    def left(self) -> float:
        """Seconds until the hard deadline (the whole deadline while no signal came)."""
        return self.deadline if self.since is None else max(0.0, self.since + self.deadline - time.monotonic())

    def _expired(self) -> None:
        assert self.signum is not None
        _hard_exit(0 if self.done else 128 + self.signum, f"shutdown took over {self.deadline} s")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            _hard_exit(128 + signum, f"{name} again before shutdown finished")
        self.signum, self.since = signum, time.monotonic()
        timer = threading.Timer(self.deadline, self._expired)
        timer.daemon = True  # never what keeps the process alive
        timer.start()
        if self._wake is not None:
            self._wake()


@contextlib.contextmanager
def _signals_wake(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Wake the loop's select() on every signal, whichever thread the kernel delivers it to.

    Python runs signal handlers in the main thread only; without a wakeup fd a signal taken by a
    worker thread would wait for the loop's next timer (what loop.add_signal_handler does too).
    """
    rsock, wsock = socket.socketpair()
    for sock in (rsock, wsock):
        sock.setblocking(False)

    def drain() -> None:
        with contextlib.suppress(OSError):
            rsock.recv(4096)

    loop.add_reader(rsock.fileno(), drain)
    previous = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        loop.remove_reader(rsock.fileno())
        rsock.close()
        wsock.close()


def keep_freed_memory() -> None:
    """Keep freed buffers in the heap for the next block instead of handing them back to the OS:
    every 1 MiB a transfer frees is allocated again at once, and fresh pages cost ≈2.5 ms per MiB
    on the reference VM (glibc returns chunks above its mmap threshold, and heap tops above its
    trim threshold, at each free)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its allocator has its own policy
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's largest: blocks come from the heap
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024)
    # Each thread that allocates gets a heap of its own (up to 8 per core), each keeping what was
    # freed in it: a seeder serving four fetchers peaked at 219 MiB with them, 166 MiB with two.
    libc.mallopt(M_ARENA_MAX, 2)


@contextlib.contextmanager
def _home_lock(home: NodeHome) -> Iterator[None]:
    with open(home.path / "daemon.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PeercloudError(f"a peercloud daemon is already running for {home.path}") from None
        yield


def serve(
    home: NodeHome, listen: Address, api: Address, announce: Callable[[str], None], roles: frozenset[str] = frozenset()
) -> None:
    """Run the daemon until SIGINT/SIGTERM; the process is gone within HARD_DEADLINE of the first signal.

    Not asyncio.run: it would wait without limit for the default executor's threads (an add or
    an fsck in a thread runs to its end), and the interpreter would join them again at exit.
    """
    keep_freed_memory()
    shutdown = Shutdown()
    shutdown.install()
    loop = asyncio.new_event_loop()  # not uvloop's: see decision 0017
    try:
        loop.run_until_complete(run(home, listen, api, announce, shutdown, roles))
    finally:
        _close_loop(loop, min(TASK_GRACE, shutdown.left()))
    _abandon_busy_threads(min(THREAD_GRACE, shutdown.left()))
    shutdown.done = True


async def run(
    home: NodeHome,
    listen: Address,
    api: Address,
    announce: Callable[[str], None],
    shutdown: Shutdown,
    roles: frozenset[str] = frozenset(),
) -> None:
    """Run until `shutdown` sees SIGINT/SIGTERM; `announce` gets one line per startup fact for the terminal."""
    home.require()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wake() -> None:  # from a signal handler: the loop may be anywhere, or closed already
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    shutdown.on_request(wake)
    with _home_lock(home), _signals_wake(loop):
        node = LocalNode(home)
        service = NodeService(node, listen, roles)
        try:
            await service.start()
        except OSError as e:
            await _bounded(service.stop(), SERVICE_GRACE)
            node.close()
            # asyncio's message names the address; the relay's names its relay.listen setting.
            raise PeercloudError(f"cannot listen ({listen} for peers): {e.strerror or e}") from None
        config = uvicorn.Config(
            create_app(service, home.api_token()),
            host=api.host,
            port=api.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=API_GRACE,  # otherwise a long add or get stream holds shutdown
        )
        server = _ApiServer(config)
        api_task = loop.create_task(server.serve())
        try:
            while not server.started:
                if api_task.done():
                    raise PeercloudError(f"cannot serve the API on {api}: port in use or not allowed")
                await asyncio.sleep(0.02)
            api_port = server.servers[0].sockets[0].getsockname()[1]
            api_address = Address(api.host, api_port)
            state = {
                "pid": os.getpid(),
                "api": str(api_address),
                "listen": service.listening,
                "peer_id": str(node.identity.peer_id),
            }
            write_atomic(home.daemon_path, json.dumps(state).encode(), mode=0o600)
            announce(f"peer ID  {node.identity.peer_id}")
            announce(f"peers    {', '.join(service.listening)}")
            announce(f"API      http://{api_address} (token in {home.token_path})")
            if roles:
                announce(f"roles    {', '.join(sorted(roles))}")
            await stop.wait()
            announce("stopping")
        finally:
            home.daemon_path.unlink(missing_ok=True)
            # The API and the peers close side by side: requests waiting on peers fail fast.
            await asyncio.gather(_stop_api(server, api_task), _bounded(service.stop(), SERVICE_GRACE))
            node.close()  # threads still using the index fail now instead of running on


async def _stop_api(server: uvicorn.Server, task: "asyncio.Task[None]") -> None:
    """Stop uvicorn: in-flight requests get API_GRACE, then their tasks and connections are cut."""
    logging.getLogger("uvicorn.error").addFilter(_QuietCancel())
    server.should_exit = True
    await asyncio.wait({task}, timeout=API_GRACE + 0.5)
    if not task.done():
        server.force_exit = True
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
    for conn in list(server.server_state.connections):
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.close()  # a response cut short: the client sees the connection end
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.warning("API server ended with an error: %s", task.exception())


async def _bounded(step: Awaitable[None], timeout: float) -> None:
    """Await a shutdown step for at most `timeout` seconds, then move on without it."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("shutdown step did not finish within %.1f s; going on without it", timeout)
        task.cancel()
    elif not task.cancelled() and task.exception() is not None:
        log.warning("shutdown step failed: %s", task.exception())


def _close_loop(loop: asyncio.AbstractEventLoop, grace: float) -> None:
    """Cancel what still runs (again and again: a swallowed cancel must not hang us), then close."""
    deadline = time.monotonic() + grace
    pending = asyncio.all_tasks(loop)
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = loop.run_until_complete(asyncio.wait(pending, timeout=0.1))
    with contextlib.suppress(Exception):
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), max(0.05, deadline - time.monotonic())))
    loop.close()  # its default executor is shut down without waiting for busy threads


def _abandon_busy_threads(grace: float) -> None:
    """Give worker threads still running a moment, then exit without joining them.

    The interpreter would otherwise wait for each to finish its job (an add of a large file, a
    full fsck); they no longer have an index or a loop to report to. Stopping them mid-write is
    a crash the store recovers from.
    """
    deadline = time.monotonic() + grace
    busy = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for t in busy:
        t.join(max(0.0, deadline - time.monotonic()))
    busy = [t for t in busy if t.is_alive()]
    if busy:
        log.warning("stopped with %d worker thread(s) still busy; their work is abandoned", len(busy))
        _hard_exit(0, None)
