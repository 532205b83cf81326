"""`python -m peercloud`: the command line, quiet on Ctrl-C even while it is still importing."""

import os
import signal
from types import FrameType


def _interrupted(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C before the CLI has loaded: exit 130 like an interrupted command, with no traceback."""
    os._exit(130)


if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
    signal.signal(signal.SIGINT, _interrupted)  # main() hands Ctrl-C back to the commands

from peercloud.cli.app import main  # noqa: E402 - after the handler, so an early Ctrl-C stays quiet

main()
