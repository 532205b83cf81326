"""`peercloud bucket …`, `put`, `mv`, and the BUCKET/KEY forms of `ls`, `get` and `rm`.

Buckets live in the cloud the daemon runs, so these need `peercloud up`. A name is told from an
object by its '/': caps and object IDs never hold one.
"""

import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import typer
from rich.table import Table

from peercloud.cli.client import DaemonClient
from peercloud.cli.cloud import daemon_client
from peercloud.cli.output import JsonFlag, out, print_json, progress_bar
from peercloud.errors import NotFoundError, UsageError
from peercloud.units import format_size

bucket_app = typer.Typer(help="Buckets: named files in the cloud, shared across devices and members by caps.")
WHY = "buckets live in the cloud the daemon runs"


def _client(ctx: typer.Context) -> DaemonClient:
    return daemon_client(ctx, WHY)


def _meta(pairs: list[str] | None) -> dict[str, str]:
    meta = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta takes KEY=VALUE, not {pair!r}")
        meta[key] = value
    return meta


@bucket_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Local name: a-z, 0-9, '.', '-', '_'.")],
    cls: Annotated[
        str | None, typer.Option("--class", help="Class of its index and objects [default: the node's].")
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Create an empty bucket in the cloud."""
    data = _client(ctx).call("POST", "/v1/buckets", {"name": name, "storage_class": cls})
    if json:
        print_json(data)
    else:
        out.print(f"Created bucket {data['name']} (class {data['class']}, ID {data['bucket_id']})")


@bucket_app.command("ls")
def list_buckets(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Buckets this node reads or writes."""
    rows = _client(ctx).call("GET", "/v1/buckets")
    if json:
        print_json(rows)
        return
    if not rows:
        out.print("No buckets yet. Create one with `peercloud bucket create NAME`.")
        return
    table = Table("bucket", "access", "class", "keys", "size", "ID", box=None)
    for r in rows:
        table.add_row(r["name"], r["access"], r["class"], str(r["keys"]), format_size(r["bytes"]), r["bucket_id"][:12])
    out.print(table)


@bucket_app.command("rm")
def remove_bucket(
    ctx: typer.Context,
    name: str,
    force: Annotated[bool, typer.Option("--force", help="Remove its keys first (deleting what you own).")] = False,
    json: JsonFlag = False,
) -> None:
    """Forget a bucket on this node; refused while it holds keys, unless --force."""
    data = _client(ctx).call("DELETE", f"/v1/buckets/{quote(name, safe='')}?force={str(force).lower()}")
    if json:
        print_json(data)
    else:
        out.print(f"Removed bucket {data['name']} ({data['keys_removed']} key(s) removed)")


@bucket_app.command("share")
def share(
    ctx: typer.Context,
    name: str,
    write: Annotated[
        bool, typer.Option("--write", help="A cap that also puts and removes (your other devices).")
    ] = False,
    json: JsonFlag = False,
) -> None:
    """Print a cap for another node: read-only, or with --write for your own devices."""
    data = _client(ctx).call("POST", f"/v1/buckets/{quote(name, safe='')}/share?write={str(write).lower()}")
    if json:
        print_json(data)
    else:
        out.print(data["cap"], markup=False, soft_wrap=True)


@bucket_app.command("import")
def import_cap(
    ctx: typer.Context,
    cap: str,
    name: Annotated[str | None, typer.Option("--as", help="Local name [default: from the bucket's ID].")] = None,
    json: JsonFlag = False,
) -> None:
    """Add a bucket someone shared with this node, and read what it holds."""
    data = _client(ctx).call("POST", "/v1/buckets/import", {"cap": cap, "name": name})
    if json:
        print_json(data)
    else:
        more = "" if data["caught_up"] else " so far; still reading its writers' logs"
        out.print(
            f"Imported bucket {data['name']} ({data['access']}): {data['keys']} key(s), "
            f"{format_size(data['bytes'])}{more}"
        )


@bucket_app.command("unshare")
def unshare(ctx: typer.Context, name: str, json: JsonFlag = False) -> None:
    """New keys for the bucket: every cap shared so far sees nothing written from now on."""
    data = _client(ctx).call("POST", f"/v1/buckets/{quote(name, safe='')}/unshare")
    if json:
        print_json(data)
    else:
        out.print(f"Bucket {data['name']} has new keys (epoch {data['epoch']}); share it again with who keeps access")


def put(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A file, a folder, or an object's read cap.")],
    target: Annotated[str, typer.Argument(help="BUCKET/KEY, or BUCKET/PREFIX/ for a folder.")],
    meta: Annotated[list[str] | None, typer.Option("--meta", help="KEY=VALUE user metadata (repeatable).")] = None,
    json: JsonFlag = False,
) -> None:
    """Put a file (or every file of a folder) into a bucket under a key."""
    if "/" not in target:
        raise UsageError("the target is BUCKET/KEY (or BUCKET/PREFIX/ for a folder)")
    src = source if source.lower().startswith("pcr1_") and not Path(source).exists() else str(Path(source).resolve())
    client = _client(ctx)
    started = time.perf_counter()
    with progress_bar("put") as progress:
        data = client.stream("/v1/put", {"source": src, "target": target, "meta": _meta(meta)}, progress)
    if json:
        print_json(data)
    elif "files" in data:
        took = time.perf_counter() - started
        out.print(
            f"Put {data['files']} file(s), {format_size(data['bytes'])}, under {data['bucket']}/{data['prefix']} "
            f"in {took:.1f} s"
        )
    else:
        out.print(f"Put {data['bucket']}/{data['key']} ({format_size(data['size'])}, object {data['object_id'][:12]})")


def move(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="BUCKET/KEY.")],
    target: Annotated[str, typer.Argument(help="BUCKET/KEY, or BUCKET/PREFIX/ to keep the name.")],
    json: JsonFlag = False,
) -> None:
    """Rename a key (the object stays where it is)."""
    data = _client(ctx).call("POST", "/v1/keys/move", {"source": source, "target": target})
    if json:
        print_json(data)
    else:
        out.print(f"Moved {data['from']} to {data['to']}")


def list_keys(ctx: typer.Context, target: str, recursive: bool, json: bool) -> None:
    """`ls BUCKET[/PREFIX]`: keys at this level and the prefixes below (all keys with --recursive)."""
    client = _client(ctx)
    keys: list[dict[str, Any]] = []
    prefixes: list[str] = []
    start = ""
    while True:
        query = urlencode({"target": target, "recursive": str(recursive).lower(), "start": start, "limit": 10000})
        page = client.call("GET", f"/v1/keys?{query}")
        keys += page["keys"]
        prefixes += page["prefixes"]
        if not page["truncated"]:
            break
        start = (keys[-1]["key"] + "\x00") if keys else ""
        if not keys:
            break
    if json:
        print_json({"bucket": page["bucket"], "prefix": page["prefix"], "keys": keys, "prefixes": prefixes})
        return
    for p in prefixes:
        out.print(f"{'':>10}  {'':16}  {p}", markup=False)
    for k in keys:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(k["modified"]))
        out.print(f"{format_size(k['size']):>10}  {when:16}  {k['key']}", markup=False)


def get_key(ctx: typer.Context, target: str, output: Path | None, json: bool) -> None:
    """`get BUCKET/KEY [-o OUT]` or `get BUCKET/PREFIX/ -o DIR`."""
    client = _client(ctx)
    body = {"target": target, "output": str(output) if output else None, "cwd": str(Path.cwd())}
    with progress_bar("get") as progress:
        data = client.stream("/v1/keys/get", body, progress)
    if json:
        print_json(data)
    elif "files" in data:
        out.print(f"Wrote {data['files']} file(s), {format_size(data['bytes'])}, into {data['path']}")
    else:
        out.print(f"Wrote {data['path']} ({format_size(data['size'])}, every block verified)")


def remove_key(ctx: typer.Context, target: str, recursive: bool, json: bool) -> None:
    """`rm BUCKET/KEY` (or `rm --recursive BUCKET/PREFIX/`)."""
    query = urlencode({"target": target, "recursive": str(recursive).lower()})
    data = _client(ctx).call("DELETE", f"/v1/keys?{query}")
    if json:
        print_json(data)
    else:
        deleted = len(data["objects_deleted"])
        out.print(
            f"Removed {data['removed']} key(s) from {data['bucket']}; {deleted} object(s) no longer named deleted"
        )


def object_of(ctx: typer.Context, target: str) -> str:
    """The object a BUCKET/KEY names (for `status` and `info`, which take either)."""
    query = urlencode({"target": target, "recursive": "true", "limit": 1})
    found = _client(ctx).call("GET", f"/v1/keys?{query}")
    key = target.partition("/")[2]
    if not found["keys"] or found["keys"][0]["key"] != key:
        raise NotFoundError(f"no key {key!r} in bucket {found['bucket']!r}")
    return str(found["keys"][0]["object_id"])
