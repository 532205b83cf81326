"""The node home: where a node keeps its key, config, index and blocks."""

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from peercloud.errors import NotFoundError
from peercloud.fsutil import fsync_dir, write_atomic

HOME_ENV = "PEERCLOUD_HOME"


@dataclass(frozen=True)
class NodeHome:
    """Paths of one node's files; creating them is `init`'s job."""

    path: Path

    @classmethod
    def resolve(cls, home: str | Path | None = None) -> "NodeHome":
        """The home from --home, else $PEERCLOUD_HOME, else ~/.peercloud."""
        chosen = home or os.environ.get(HOME_ENV) or Path.home() / ".peercloud"
        return cls(Path(chosen).expanduser().absolute())

    @property
    def key_path(self) -> Path:
        """The node's Ed25519 private key (mode 0600)."""
        return self.path / "node.key"

    @property
    def config_path(self) -> Path:
        """config.toml."""
        return self.path / "config.toml"

    @property
    def index_path(self) -> Path:
        """The SQLite index."""
        return self.path / "index.sqlite"

    @property
    def secret_path(self) -> Path:
        """Secret that keys convergent encryption (until a cloud provides a shared one)."""
        return self.path / "convergence.secret"

    @property
    def token_path(self) -> Path:
        """Bearer token the CLI presents to the daemon's REST API (mode 0600)."""
        return self.path / "api.token"

    @property
    def daemon_path(self) -> Path:
        """Where a running daemon says how to reach it (removed when it stops)."""
        return self.path / "daemon.json"

    def api_token(self) -> str:
        """The API token, created on first use."""
        if not self.token_path.exists():
            write_atomic(self.token_path, secrets.token_urlsafe(32).encode(), mode=0o600)
        return self.token_path.read_text().strip()

    def exists(self) -> bool:
        """True when `init` has run here."""
        return self.key_path.exists()

    def init(self) -> bool:
        """Create the node home; returns False (and changes nothing) when it already exists."""
        made = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        for created in reversed(made):
            fsync_dir(created.parent)  # the home's own name must survive a power cut too
        if self.exists():
            return False
        # Imported here: every CLI command resolves a home, only `init` creates one (CLI start time).
        from peercloud.identity import Identity
        from peercloud.node.config import Config
        from peercloud.store.blockstore import BlockStore
        from peercloud.store.index import Index

        if not self.config_path.exists():
            Config().save(self.config_path)
        if not self.secret_path.exists():
            write_atomic(self.secret_path, os.urandom(32), mode=0o600)
        self.api_token()
        index = Index(self.index_path)
        BlockStore(self.path, index)  # creates the block, temp and quarantine folders
        index.close()
        Identity.generate().save_new(self.key_path)  # last: its presence marks a complete init
        return True

    def require(self) -> None:
        """Fail with advice when there is no node here."""
        if not self.exists():
            raise NotFoundError(f"no peercloud node at {self.path}; run `peercloud init` (or pass --home)")
