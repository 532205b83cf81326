"""The `peercloud` command with one durability call taken out, to prove the power-loss tests need it.

    python -m tests.powerloss.mutant SITE [peercloud arguments...]

Each SITE names one fsync, directory fsync or SQLite setting in the source (`SITES`). The
mutant runs the real CLI with that one call skipped (or SQLite at `synchronous=OFF`), so a
power-loss test run against it must fail: otherwise the call is not needed, or no test covers it.
"""

import os
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

# Every durability call site of the source, by name: what it makes durable.
SITES: dict[str, str] = {
    "block-data": "fsutil.DirectAppender.finish from store write_new_file_direct: a block file's data",
    "block-shard-dir": "store/blockstore.py BlockStore._write: fsync of blocks/ after a new shard directory",
    "block-commit-dirs": "store/blockstore.py BlockStore.commit: fsync of the shard directories before rows",
    "quarantine-dir": "store/blockstore.py BlockStore.quarantine: fsync of quarantine/ after moving a bad block in",
    "output-data": "store/partial.py PartialFile.finish: a get's output data before the rename",
    "output-dir": "store/partial.py PartialFile.finish: fsync of the output's directory after the rename",
    "partial-data": "store/partial.py PartialFile._sync_data: a get's segments before its journal names them",
    "partial-journal": "store/partial.py PartialFile._append: the journal records (what a failed get says it kept)",
    "partial-names": "store/partial.py PartialFile._open: fsync of the output's directory after creating the "
    "partial file and its journal",
    "atomic-data": "fsutil.write_atomic: the new file's data before the rename (config, token, secret)",
    "home-parent": "node/home.py NodeHome.init: fsync of each directory the home was created in",
    "key-data": "identity.py Identity.save_new: the node key's data",
    "key-dir": "identity.py Identity.save_new: fsync of the home after linking the key",
    "sqlite-full": "store/db.py Database: SQLite synchronous=FULL (the mutant sets OFF)",
}


def _callers() -> list[str]:
    """Qualified names of the Python functions on the stack, innermost first."""
    names = []
    frame = sys._getframe(2)
    while frame is not None:
        names.append(f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_qualname}")
        frame = frame.f_back  # type: ignore[assignment]
    return names


def _skip_when(real: Callable[..., Any], test: Callable[[list[str]], bool]) -> Callable[..., Any]:
    def maybe(*args: Any, **kwargs: Any) -> Any:
        if test(_callers()):
            return None
        return real(*args, **kwargs)

    return maybe


def mutate(site: str) -> None:
    """Take the one call `site` names out of this process's peercloud."""
    from peercloud import fsutil, identity
    from peercloud.node import home
    from peercloud.store import blockstore, db, partial

    def within(*names: str) -> Callable[[list[str]], bool]:
        return lambda stack: all(any(s.endswith(n) for s in stack) for n in names)

    data_sync = {
        "block-data": within("DirectAppender.finish", "write_new_file_direct"),
        "output-data": within("PartialFile.finish"),
        "atomic-data": within("write_file_durably", "write_atomic"),
        "key-data": within("write_file_durably", "save_new"),
    }
    dir_sync = {
        "block-shard-dir": (blockstore, within("BlockStore._write")),
        "block-commit-dirs": (blockstore, within("BlockStore.commit")),
        "quarantine-dir": (blockstore, within("BlockStore.quarantine")),
        "output-dir": (partial, within("PartialFile.finish")),
        "partial-names": (partial, within("PartialFile._open")),
        "home-parent": (home, within("NodeHome.init")),
        "key-dir": (identity, within("save_new")),
    }
    datasync = {
        "partial-data": within("PartialFile._sync_data"),
        "partial-journal": within("PartialFile._append"),
    }
    if site in data_sync:
        fsutil.os.fsync = _skip_when(os.fsync, data_sync[site])  # type: ignore[attr-defined]
    elif site in datasync:
        partial.os.fdatasync = _skip_when(os.fdatasync, datasync[site])  # type: ignore[attr-defined]
    elif site in dir_sync:
        module, test = dir_sync[site]
        module.fsync_dir = _skip_when(module.fsync_dir, test)  # type: ignore[attr-defined]
    elif site == "sqlite-full":
        real_connect = sqlite3.connect

        class Unsynced(sqlite3.Connection):
            def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
                return super().execute(sql.replace("synchronous=FULL", "synchronous=OFF"), *args)

        def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = real_connect(*args, factory=Unsynced, **kwargs)
            conn.execute("PRAGMA synchronous=OFF")
            return conn

        db.sqlite3.connect = connect  # type: ignore[attr-defined]
    else:
        raise SystemExit(f"unknown site {site!r}; known: {', '.join(SITES)}")


def main() -> None:
    """Run the peercloud CLI with one site mutated."""
    site, *args = sys.argv[1:]
    mutate(site)
    sys.argv = ["peercloud", *args]
    from peercloud.cli.app import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
