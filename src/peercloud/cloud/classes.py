"""Storage classes: the redundancy policy an owner picks per object (replicas or erasure code).

Classes live in the signed cloud document, so every member applies the same ones; the defaults
here are what every cloud starts with, and what a node outside any cloud uses.
"""

import re
from dataclasses import dataclass
from typing import Any

from peercloud.cloud.durations import DEFAULT_GRACE
from peercloud.content.erasure import Coding
from peercloud.errors import FormatError, UsageError

MAX_COPIES = 32
_NAME = re.compile(r"^[a-z0-9][a-z0-9.+_-]{0,31}$")


@dataclass(frozen=True)
class StorageClass:
    """A named policy: `replicas` to `max_replicas` full copies, or an erasure code k+m.

    `spread` names a member tag (such as `site`) whose values should differ between holders;
    `grace` is how long a holder may stay offline before repair replaces what it held.
    """

    name: str
    replicas: int = 0
    k: int = 0
    m: int = 0
    max_replicas: int = 0
    spread: str = ""
    grace: float = DEFAULT_GRACE

    def __post_init__(self) -> None:
        if self.replicas and self.max_replicas == 0:
            object.__setattr__(self, "max_replicas", self.replicas)  # no max given: max is the minimum
        if not _NAME.match(self.name):
            raise UsageError(f"class name {self.name!r}: use 1-32 of a-z 0-9 . + _ -, starting with a letter or digit")
        if self.replicas and (self.k or self.m):
            raise UsageError("a class has either replicas or an erasure code k+m, not both")
        if not self.replicas and not self.k:
            raise UsageError("erasure code needs k >= 1" if self.m else "a class needs replicas or an erasure code k+m")
        if self.replicas and not 1 <= self.replicas <= self.max_replicas <= MAX_COPIES:
            raise UsageError(f"replicas must be 1..{MAX_COPIES} and max at least replicas")
        if self.k and not (self.k >= 1 and self.m >= 0 and self.k + self.m <= 256):
            raise UsageError("erasure code needs k >= 1, m >= 0 and k+m <= 256")
        if not 0 <= self.grace <= 365 * 86400:
            raise UsageError("grace must be between 0 and 365 days")

    @property
    def maximum(self) -> int:
        """Full copies to grow to while members have room (replicas when no max was set)."""
        return self.max_replicas

    @property
    def coding(self) -> Coding:
        """How each segment is cut into blocks (replicas store the one block N times)."""
        return Coding(1, 1) if self.replicas else Coding(self.k, self.k + self.m)

    @property
    def overhead(self) -> float:
        """Bytes stored across the cloud per byte of data, when the class holds at its minimum."""
        return float(self.replicas) if self.replicas else (self.k + self.m) / self.k

    def describe(self) -> str:
        """One phrase for tables: what the class keeps."""
        if self.replicas:
            copies = f"{self.replicas} full cop{'y' if self.replicas == 1 else 'ies'}"
            return copies + (f" (up to {self.maximum})" if self.maximum > self.replicas else "")
        return f"erasure code {self.k}+{self.m} (any {self.k} of {self.k + self.m} shares)"

    def to_dict(self) -> dict[str, Any]:
        """The class as it appears in the cloud document."""
        out: dict[str, Any] = {"name": self.name, "grace": self.grace}
        if self.replicas:
            out.update(replicas=self.replicas, max=self.maximum)
        else:
            out.update(k=self.k, m=self.m)
        if self.spread:
            out["spread"] = self.spread
        return out

    @classmethod
    def from_dict(cls, d: Any) -> "StorageClass":
        """Read a class from a (verified) cloud document; malformed entries are FormatErrors."""
        if not isinstance(d, dict):
            raise FormatError("storage class entry is not a map")
        try:
            grace = d.get("grace", DEFAULT_GRACE)
            return cls(
                name=_typed(d, "name", str),
                replicas=_typed(d, "replicas", int, 0),
                k=_typed(d, "k", int, 0),
                m=_typed(d, "m", int, 0),
                max_replicas=_typed(d, "max", int, 0),
                spread=_typed(d, "spread", str, ""),
                grace=float(grace) if isinstance(grace, int | float) else -1.0,
            )
        except UsageError as e:
            raise FormatError(f"storage class in cloud document: {e}") from None


def _typed(d: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = d.get(key, default)
    if type(value) is not kind:
        raise FormatError(f"storage class field {key!r} must be {kind.__name__}")
    return value


DEFAULT_CLASSES: dict[str, StorageClass] = {
    c.name: c
    for c in (
        StorageClass("replica-1", replicas=1),
        StorageClass("replica-2", replicas=2),
        StorageClass("replica-3", replicas=3),
        StorageClass("ec-2+1", k=2, m=1),
        StorageClass("ec-4+2", k=4, m=2),
    )
}
DEFAULT_CLASS = "replica-3"


def shortfall(cls: StorageClass, members: "list[Any]") -> str | None:
    """Why the cloud's members cannot give a class what it asks for today, or None: `class add`
    says so rather than define a class whose objects stay degraded until members join."""
    holders = cls.replicas or cls.k + cls.m
    storing = [m for m in members if m.offer > 0]
    if len(storing) < holders:
        return (
            f"class {cls.name!r} needs {holders} members to hold its blocks apart; "
            f"this cloud has {len(storing)} that offer storage"
        )
    if cls.spread and not any(m.tag(cls.spread) for m in storing):
        return f"class {cls.name!r} spreads over tag {cls.spread!r}, which no member has"
    return None


def lookup(name: str, classes: dict[str, StorageClass] | None = None) -> StorageClass:
    """Find a class by name, with an error that lists the known ones."""
    known = DEFAULT_CLASSES if classes is None else classes
    found = known.get(name)
    if found is None:
        raise UsageError(f"unknown storage class {name!r}; known classes: {', '.join(known)}")
    return found
