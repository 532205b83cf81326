"""`peercloud up`: the node as a daemon — peer listener, peer links, and the REST API, one loop."""

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator

import uvicorn

from peercloud.api.app import create_app
from peercloud.errors import PeercloudError
from peercloud.fsutil import write_atomic
from peercloud.net.link import Address
from peercloud.node.home import NodeHome
from peercloud.node.local import LocalNode
from peercloud.node.service import NodeService

log = logging.getLogger(__name__)
DEFAULT_LISTEN = Address("0.0.0.0", 4650)
DEFAULT_API = Address("127.0.0.1", 4651)


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def _home_lock(home: NodeHome) -> Iterator[None]:
    with open(home.path / "daemon.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PeercloudError(f"a peercloud daemon is already running for {home.path}") from None
        yield


async def run(home: NodeHome, listen: Address, api: Address, announce: Callable[[str], None]) -> None:
    """Run until SIGINT/SIGTERM; `announce` gets one line per startup fact for the terminal."""
    home.require()
    with _home_lock(home):
        node = LocalNode(home)
        service = NodeService(node, listen)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await service.start()
        except OSError as e:
            node.close()
            raise PeercloudError(f"cannot listen for peers on {listen}: {e.strerror or e}") from None
        config = uvicorn.Config(
            create_app(service, home.api_token()),
            host=api.host,
            port=api.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
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
            await stop.wait()
            announce("stopping")
        finally:
            home.daemon_path.unlink(missing_ok=True)
            server.should_exit = True
            with contextlib.suppress(Exception):
                await api_task
            await service.stop()
            node.close()
