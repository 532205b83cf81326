"""The REST API's request bodies (pydantic models, so FastAPI validates them and documents them)."""

from pydantic import BaseModel

from peercloud.cloud.durations import DEFAULT_GRACE


class AddRequest(BaseModel):
    """Add the file at `path` (on the daemon's machine)."""

    path: str
    storage_class: str | None = None
    convergent: bool = False


class GetRequest(BaseModel):
    """Fetch `cap` and write it to `output` (None: its known name in `cwd`, if free or `force`)."""

    cap: str
    output: str | None = None
    cwd: str | None = None
    force: bool = False


class PinRequest(BaseModel):
    """Fetch and keep every block of the object named by `cap`."""

    cap: str


class PeerRequest(BaseModel):
    """PEERID@HOST:PORT."""

    peer: str


class ReclassRequest(BaseModel):
    """Put the object under the cloud's class `cls`."""

    cls: str


class UnpinRequest(BaseModel):
    """Drop this node's copy of the object named by `cap`."""

    cap: str


class CloudCreateRequest(BaseModel):
    """Found a cloud named `name`; this node offers `offer` bytes with `tags` (KEY=VALUE)."""

    name: str
    offer: int
    tags: list[str] = []
    bring: bool = False  # offer the objects this node added before to the cloud


class InviteRequest(BaseModel):
    """Issue a one-time invite, valid for `expires` seconds (None: until used)."""

    expires: float | None = None


class JoinRequest(BaseModel):
    """Join with an invite token, offering `offer` bytes with `tags`."""

    token: str
    offer: int
    tags: list[str] = []
    bring: bool = False


class RoleRequest(BaseModel):
    """The role a member gets: `admin` or `member`."""

    role: str


class ClassRequest(BaseModel):
    """A storage class: `replicas` (with `max`) or an erasure code `k`+`m`."""

    name: str
    replicas: int = 0
    max: int = 0
    k: int = 0
    m: int = 0
    spread: str = ""
    grace: float = DEFAULT_GRACE
    force: bool = False  # define it even though the members cannot meet it yet


class BucketCreateRequest(BaseModel):
    """A new bucket `name` under the cloud's class `storage_class` (None: the default)."""

    name: str
    storage_class: str | None = None


class BucketImportRequest(BaseModel):
    """Add the bucket a cap names, under the alias `name` (None: from its ID)."""

    cap: str
    name: str | None = None


class PutRequest(BaseModel):
    """Put the file or folder at `source` (or an object's read cap) at `target` (BUCKET/KEY or BUCKET/PREFIX/)."""

    source: str
    target: str
    meta: dict[str, str] = {}


class KeyGetRequest(BaseModel):
    """Write `target` (BUCKET/KEY, or BUCKET/PREFIX/ into a folder) to `output` in `cwd`."""

    target: str
    output: str | None = None
    cwd: str | None = None


class MoveRequest(BaseModel):
    """Rename the key `source` to `target` (each BUCKET/KEY)."""

    source: str
    target: str
