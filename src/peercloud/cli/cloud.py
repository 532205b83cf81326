"""`peercloud cloud …` and `peercloud class …`: membership and storage classes, via the daemon.

Both change or read the signed cloud document, which the running daemon owns and gossips, so
they need `peercloud up`.
"""

import shutil
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from peercloud.cli.client import DaemonClient
from peercloud.cli.output import JsonFlag, node_home, out, print_json
from peercloud.cloud.durations import DEFAULT_GRACE, format_duration, parse_duration
from peercloud.errors import DaemonNeededError, UsageError
from peercloud.units import format_size, parse_size

cloud_app = typer.Typer(help="The cloud this node belongs to: create, invite, join, members, leave.")
class_app = typer.Typer(help="Storage classes of the cloud: how many copies or which erasure code.")

OfferOption = Annotated[
    str | None, typer.Option("--offer", help="Storage offered to the cloud, e.g. 50GiB [default: free disk space].")
]
TagOption = Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE, e.g. site=home (repeatable).")]
BringOption = Annotated[
    bool, typer.Option("--bring", help="Offer the objects this node already has to the cloud (placed, repaired).")
]


def _say_brought(data: dict[str, Any]) -> None:
    """What became of the objects added before the cloud: brought, or staying on this node only."""
    if data["brought"]:
        out.print(f"Brought {len(data['brought'])} existing object(s) into the cloud; placement takes over.")
    for why in data["skipped"]:
        out.print(f"Not brought: {why}")
    if data["local_only"]:
        out.print(
            f"{data['local_only']} object(s) added before stay on this node only (not placed, not repaired): "
            "`peercloud cloud bring` offers them to the cloud."
        )


def daemon_client(ctx: typer.Context, what: str = "the cloud is run by the daemon") -> DaemonClient:
    """The running daemon of the node home, or DaemonNeededError saying why it is needed."""
    home = node_home(ctx)
    home.require()
    client = DaemonClient.find(home)
    if client is None:
        raise DaemonNeededError(f"{what}: start it with `peercloud up`, then retry")
    return client


def _client(ctx: typer.Context) -> DaemonClient:
    return daemon_client(ctx)


def _offer(ctx: typer.Context, text: str | None) -> int:
    if text is None:
        return shutil.disk_usage(node_home(ctx).path).free
    try:
        return parse_size(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


@cloud_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for the cloud.")],
    offer: OfferOption = None,
    tag: TagOption = None,
    bring: BringOption = False,
    json: JsonFlag = False,
) -> None:
    """Found a cloud; this node becomes its admin."""
    body = {"name": name, "offer": _offer(ctx, offer), "tags": tag or [], "bring": bring}
    data = _client(ctx).call("POST", "/v1/cloud", body)
    if json:
        print_json(data)
    else:
        out.print(f"Created cloud {data['name']!r} ({data['cloud_id']}); you are its admin.")
        _say_brought(data)
        out.print("Invite peers with `peercloud cloud invite`.")


@cloud_app.command("invite")
def invite(
    ctx: typer.Context,
    expires: Annotated[str, typer.Option(help="How long the token stays valid, e.g. 1h or 30d.")] = "7d",
    json: JsonFlag = False,
) -> None:
    """Print a one-time invite token (admins only); the token is alone on the last line."""
    seconds = parse_duration(expires)
    data = _client(ctx).call("POST", "/v1/cloud/invite", {"expires": seconds})
    if json:
        print_json(data)
        return
    valid = f"valid for {format_duration(seconds)}"
    out.print(f"One-time invite to {data['cloud_id']}, {valid}. On the new peer run: peercloud cloud join TOKEN")
    print(data["token"])


@cloud_app.command("join")
def join(
    ctx: typer.Context,
    token: Annotated[str, typer.Argument(help="The invite token from an admin.")],
    offer: OfferOption = None,
    tag: TagOption = None,
    bring: BringOption = False,
    json: JsonFlag = False,
) -> None:
    """Join a cloud with an invite token."""
    body = {"token": token, "offer": _offer(ctx, offer), "tags": tag or [], "bring": bring}
    data = _client(ctx).call("POST", "/v1/cloud/join", body)
    if json:
        print_json(data)
    else:
        out.print(f"Joined cloud {data['name']!r} ({data['cloud_id']}) with {len(data['members'])} members.")
        _say_brought(data)


@cloud_app.command("bring")
def bring_objects(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Offer the objects this node added before it was in the cloud to the cloud."""
    data = _client(ctx).call("POST", "/v1/cloud/bring")
    if json:
        print_json(data)
    else:
        _say_brought(data)


@cloud_app.command("members")
def members(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Members: ID, role, online?, offered and used space, tags."""
    data = _client(ctx).call("GET", "/v1/cloud")
    if json:
        print_json(data)
        return
    out.print(f"cloud {data['name']!r} ({data['cloud_id']}), document version {data['version']}")
    table = Table("peer", "role", "online", "offer", "used", "tags", box=None)
    for x in data["members"]:
        table.add_row(
            x["peer_id"][:13] + (" (you)" if x["self"] else ""),
            x["role"],
            "yes" if x["online"] else "no",
            format_size(x["offer"]),
            format_size(x["used"]),
            " ".join(f"{k}={v}" for k, v in x["tags"].items()) or "-",
        )
    out.print(table)


@cloud_app.command("leave")
def leave(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Leave the cloud (an admin signs you out)."""
    data = _client(ctx).call("POST", "/v1/cloud/leave")
    if json:
        print_json(data)
    else:
        out.print(f"Left cloud {data['left']!r}.")


@cloud_app.command("remove")
def remove(
    ctx: typer.Context, peer: Annotated[str, typer.Argument(help="Peer ID of the member.")], json: JsonFlag = False
) -> None:
    """Remove a member from the cloud (admins only)."""
    data = _client(ctx).call("DELETE", f"/v1/cloud/members/{quote(peer.strip(), safe='')}")
    if json:
        print_json(data)
    else:
        out.print(f"Removed {peer}; the cloud has {len(data['members'])} members.")


def _set_role(ctx: typer.Context, peer: str, role: str, json: bool) -> None:
    data = _client(ctx).call("POST", f"/v1/cloud/members/{quote(peer.strip(), safe='')}/role", {"role": role})
    if json:
        print_json(data)
    else:
        admins = [x["peer_id"][:13] for x in data["members"] if x["role"] == "admin"]
        out.print(f"{peer} is now {'an admin' if role == 'admin' else 'a member'}; admins: {', '.join(admins)}")


@cloud_app.command("promote")
def promote(
    ctx: typer.Context, peer: Annotated[str, typer.Argument(help="Peer ID of the member.")], json: JsonFlag = False
) -> None:
    """Make a member an admin: it may then invite, remove, change classes (admins only)."""
    _set_role(ctx, peer, "admin", json)


@cloud_app.command("demote")
def demote(
    ctx: typer.Context, peer: Annotated[str, typer.Argument(help="Peer ID of the admin.")], json: JsonFlag = False
) -> None:
    """Make an admin an ordinary member again; the cloud keeps at least one admin (admins only)."""
    _set_role(ctx, peer, "member", json)


def _print_classes(rows: list[dict[str, Any]]) -> None:
    table = Table("class", "keeps", "overhead", "spread", "grace", box=None)
    for c in rows:
        table.add_row(
            c["name"], c["describe"], f"{c['overhead']:.2f}×", c["spread"] or "-", format_duration(c["grace"])
        )
    out.print(table)


@class_app.command("ls")
def class_ls(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Storage classes, with the bytes each stores per byte of data."""
    data = _client(ctx).call("GET", "/v1/classes")
    if json:
        print_json(data)
    else:
        _print_classes(data)


@class_app.command("add")
def class_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Class name, e.g. replica-2-sites.")],
    replicas: Annotated[int | None, typer.Option(help="Full copies to keep (minimum).")] = None,
    max_: Annotated[
        int | None, typer.Option("--max", help="Grow up to this many copies while members have room.")
    ] = None,
    ec: Annotated[str | None, typer.Option(help="Erasure code K+M, e.g. 4+2.")] = None,
    spread: Annotated[str | None, typer.Option(help="Tag whose values holders should not share, e.g. site.")] = None,
    grace: Annotated[str | None, typer.Option(help="Offline time before repair, e.g. 10m.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Define it even if the members cannot meet it yet.")] = False,
    json: JsonFlag = False,
) -> None:
    """Add a storage class to the cloud (admins only)."""
    if (replicas is None) == (ec is None) or (max_ is not None and replicas is None):
        raise UsageError("give either --replicas N [--max M] or --ec K+M")
    k = m = 0
    if ec is not None:
        left, sep, right = ec.partition("+")
        if not sep or not left.isdigit() or not right.isdigit():
            raise UsageError(f"--ec expects K+M such as 4+2, got {ec!r}")
        k, m = int(left), int(right)
    body = {
        "name": name,
        "replicas": replicas or 0,
        "max": max_ or 0,
        "k": k,
        "m": m,
        "spread": spread or "",
        "grace": parse_duration(grace) if grace else DEFAULT_GRACE,
        "force": force,
    }
    data = _client(ctx).call("POST", "/v1/classes", body)
    if json:
        print_json(data)
    else:
        _print_classes(data)


@class_app.command("rm")
def class_rm(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Class name.")], json: JsonFlag = False
) -> None:
    """Remove a class no object uses (admins only)."""
    data = _client(ctx).call("DELETE", f"/v1/classes/{name}")
    if json:
        print_json(data)
    else:
        _print_classes(data)
