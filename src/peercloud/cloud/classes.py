"""Storage classes: the redundancy policy an owner picks per object (replicas or erasure code).

Later the classes live in the signed cloud document so every member applies the same ones; the
defaults here are what every cloud starts with.
"""

from dataclasses import dataclass

from peercloud.content.erasure import Coding
from peercloud.errors import UsageError


@dataclass(frozen=True)
class StorageClass:
    """A named policy: `replicas` full copies, or an erasure code of k data + m parity shares."""

    name: str
    replicas: int = 0
    k: int = 0
    m: int = 0

    @property
    def coding(self) -> Coding:
        """How each segment is cut into blocks (replicas store the one block N times)."""
        return Coding(1, 1) if self.replicas else Coding(self.k, self.k + self.m)

    @property
    def overhead(self) -> float:
        """Bytes stored across the cloud per byte of data, when the class holds."""
        return float(self.replicas) if self.replicas else (self.k + self.m) / self.k

    def describe(self) -> str:
        """One phrase for tables: what the class keeps."""
        if self.replicas:
            return f"{self.replicas} full cop{'y' if self.replicas == 1 else 'ies'}"
        return f"erasure code {self.k}+{self.m} (any {self.k} of {self.k + self.m} shares)"


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


def lookup(name: str) -> StorageClass:
    """Find a class by name, with an error that lists the known ones."""
    found = DEFAULT_CLASSES.get(name)
    if found is None:
        known = ", ".join(DEFAULT_CLASSES)
        raise UsageError(f"unknown storage class {name!r}; known classes: {known}")
    return found
