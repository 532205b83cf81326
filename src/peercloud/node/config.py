"""The node's config.toml: embedded defaults, validated on load with errors naming the key."""

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from peercloud.cloud.classes import DEFAULT_CLASS, lookup
from peercloud.content.manifest import MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE
from peercloud.errors import PeercloudError, UsageError
from peercloud.fsutil import write_atomic
from peercloud.net.link import Address, parse_peer
from peercloud.relay.server import RelaySettings
from peercloud.units import format_size, parse_size

_HEADER = """\
# peercloud node configuration. Sizes accept units: 4096, 500MB, 50GiB.
# quota: most bytes of blocks this node stores ("none" for no limit).
# segment_size: plaintext bytes per segment of new objects.
# default_class: storage class of `peercloud add` without --class.
# workers: threads for hashing, encryption and disk I/O (0 = one per core, plus two).
# keep_pins: refuse a member's delete of an object this node pinned by hand (it answers
#   "refused", and the deleter's report says so); false: such pins are deleted too.
# [connect] directories: PEERID@HOST:PORT of directory servers that introduce this node to
#   peers it cannot find otherwise (a cloud invite fills this in on join).
# [connect] relays: PEERID@HOST:PORT of relays that hold a reservation for this node, so peers
#   that cannot connect to it directly connect through them (invites carry these too).
# [connect] upnp: ask the home router (UPnP IGD) to forward the listening port to this node.
# [relay] serve: relay for others: "none", "members" (this cloud's members) or "all" (the same as
#   `up --role relay`); listen: where circuits join; the quotas apply to circuits with an end
#   outside the cloud (0 = unlimited): a cloud's own members are never throttled.
"""


@dataclass(frozen=True)
class Config:
    """Settings of one node."""

    quota: int | None = None
    segment_size: int = 1024 * 1024
    default_class: str = DEFAULT_CLASS
    workers: int = 0
    keep_pins: bool = False
    directories: tuple[str, ...] = ()
    relays: tuple[str, ...] = ()
    upnp: bool = True
    relay: RelaySettings = field(default_factory=RelaySettings)

    def to_toml(self) -> str:
        """The file form, with a header explaining each key."""
        body = {
            "store": {
                "quota": "none" if self.quota is None else format_size(self.quota).replace(" ", ""),
                "segment_size": format_size(self.segment_size).replace(" ", ""),
                "default_class": self.default_class,
                "workers": self.workers,
                "keep_pins": self.keep_pins,
            },
            "connect": {"directories": list(self.directories), "relays": list(self.relays), "upnp": self.upnp},
            "relay": {
                "serve": self.relay.serve,
                "listen": self.relay.listen,
                "reservations": self.relay.reservations,
                "circuits_per_peer": self.relay.circuits_per_peer,
                "circuit_rate": self.relay.circuit_rate,
                "circuit_bytes": self.relay.circuit_bytes,
                "reservation_ttl": self.relay.reservation_ttl,
            },
        }
        return _HEADER + tomli_w.dumps(body)

    def save(self, path: Path) -> None:
        """Write the config crash-safely."""
        write_atomic(path, self.to_toml().encode())


def _size(store: dict[str, Any], key: str, default: int | None) -> int | None:
    value = store.get(key)
    if value is None:
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lower() == "none":
        return None
    try:
        return parse_size(str(value))
    except ValueError as e:
        raise UsageError(f"config: store.{key}: {e}") from None


def load_config(path: Path) -> Config:
    """Read config.toml; any unknown or invalid key is an error that names it."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return Config()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PeercloudError(f"config {path} is not valid TOML: {e}") from None
    unknown = (
        set(data) - {"store", "connect", "relay"}
        | set(data.get("store", {})) - {"quota", "segment_size", "default_class", "workers", "keep_pins"}
        | set(data.get("connect", {})) - {"directories", "relays", "upnp"}
        | set(data.get("relay", {})) - set(RelaySettings.__dataclass_fields__)
    )
    if unknown:
        raise UsageError(f"config {path}: unknown keys {sorted(unknown)}")
    store = data.get("store", {})
    default = Config()
    segment_size = _size(store, "segment_size", default.segment_size) or default.segment_size
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise UsageError(f"config: store.segment_size must be between 4KiB and 16MiB, got {segment_size}")
    default_class = str(store.get("default_class", default.default_class))
    lookup(default_class)
    workers = store.get("workers", 0)
    if not isinstance(workers, int) or workers < 0:
        raise UsageError("config: store.workers must be a whole number >= 0")
    keep_pins = store.get("keep_pins", default.keep_pins)
    if not isinstance(keep_pins, bool):
        raise UsageError("config: store.keep_pins must be true or false")
    upnp = data.get("connect", {}).get("upnp", default.upnp)
    if not isinstance(upnp, bool):
        raise UsageError("config: connect.upnp must be true or false")
    return Config(
        _size(store, "quota", None),
        segment_size,
        default_class,
        workers,
        keep_pins,
        _peers(data, "directories"),
        _peers(data, "relays"),
        upnp,
        _relay(data.get("relay", {})),
    )


def _relay(section: dict[str, Any]) -> RelaySettings:
    """The [relay] section, each value checked."""
    default = RelaySettings()
    serve = section.get("serve", default.serve)
    if serve not in ("none", "members", "all"):
        raise UsageError('config: relay.serve must be "none", "members" or "all"')
    listen = str(section.get("listen", default.listen))
    try:
        Address.parse(listen)
    except PeercloudError as e:
        raise UsageError(f"config: relay.listen: {e}") from None
    numbers = {}
    for key in ("reservations", "circuits_per_peer", "circuit_rate", "circuit_bytes", "reservation_ttl"):
        value = section.get(key, getattr(default, key))
        if isinstance(value, str):
            value = _size({key: value}, key, 0)
        if not isinstance(value, int) or value < 0:
            raise UsageError(f"config: relay.{key} must be a whole number >= 0")
        numbers[key] = value
    return RelaySettings(serve, listen, **numbers)


def _peers(data: dict[str, Any], key: str) -> tuple[str, ...]:
    """A [connect] list of PEERID@HOST:PORT, each checked."""
    value = data.get("connect", {}).get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f'config: connect.{key} must be a list of "PEERID@HOST:PORT" strings')
    for text in value:
        try:
            parse_peer(text)
        except PeercloudError as e:
            raise UsageError(f"config: connect.{key}: {e}") from None
    return tuple(value)
