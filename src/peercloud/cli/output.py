"""Terminal output shared by commands: JSON for scripts, Rich for people, progress on stderr."""

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from peercloud.node.home import NodeHome

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Emit machine-readable output on stdout, one document."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[str, int], None] | None]:
    """A byte progress bar on stderr when it is a terminal; None otherwise.

    The callback takes ("total", bytes) once the size is known and ("advance", bytes) as work
    is done.
    """
    if not err.is_terminal:
        yield None
        return
    from rich.progress import (  # only on a terminal: the import costs start time
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(kind: str, n: int) -> None:
            if kind == "total":
                bar.update(task, total=n)
            else:
                bar.advance(task, n)

        yield update


def block_map(blocks: list[int], total: int, width: int = 48) -> str:
    """A holder's blocks as one line of cells: full, partial or empty groups of blocks."""
    if total == 0:
        return ""
    held = set(blocks)
    cells = min(total, width)
    out = []
    for c in range(cells):
        lo, hi = c * total // cells, (c + 1) * total // cells
        have = sum(1 for i in range(lo, hi) if i in held)
        out.append("█" if have == hi - lo else "▒" if have else "·")
    return "".join(out)


def node_home(ctx: typer.Context) -> "NodeHome":
    """The node home `--home` chose: the root command keeps it as its context object."""
    home: NodeHome = ctx.find_root().obj
    return home
