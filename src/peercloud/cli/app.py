"""The `peercloud` command line: thin over the node, one clear line on stderr for every failure."""

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from peercloud import __version__
from peercloud.cli.output import err, out, print_json, progress_bar
from peercloud.errors import PeercloudError
from peercloud.identity import Identity
from peercloud.node.home import HOME_ENV, NodeHome
from peercloud.node.local import LocalNode
from peercloud.units import format_size

app = typer.Typer(
    name="peercloud",
    help="A storage cloud made of ordinary peers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _home(ctx: typer.Context) -> NodeHome:
    home: NodeHome = ctx.obj
    return home


def _open(ctx: typer.Context) -> LocalNode:
    return LocalNode(_home(ctx))


def _version(value: bool) -> None:
    if value:
        out.print(f"peercloud {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option("--home", envvar=HOME_ENV, help="Node home folder [default: ~/.peercloud]."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    ctx.obj = NodeHome.resolve(home)


@app.command()
def init(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Create a node home: key, config, index and block folder. Never replaces an existing key."""
    home = _home(ctx)
    created = home.init()
    peer_id = Identity.load(home.key_path).peer_id
    if json:
        print_json({"home": str(home.path), "peer_id": str(peer_id), "created": created})
        return
    if created:
        out.print(f"Created node at {home.path}")
    else:
        out.print(f"Node already exists at {home.path}; its key is unchanged")
    out.print(f"Peer ID: {peer_id}")


@app.command("id")
def show_id(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Print this node's peer ID."""
    home = _home(ctx)
    home.require()
    peer_id = Identity.load(home.key_path).peer_id
    if json:
        print_json({"peer_id": str(peer_id)})
    else:
        out.print(str(peer_id))


@app.command()
def add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="File to add.")],
    storage_class: Annotated[
        str | None, typer.Option("--class", help="Storage class (default from config.toml).")
    ] = None,
    convergent: Annotated[
        bool, typer.Option("--convergent", help="Derive the key from the content so equal files dedupe.")
    ] = False,
    json: JsonFlag = False,
) -> None:
    """Add a file as a new object; prints its object ID and read cap."""
    with _open(ctx) as node:
        size = file.stat().st_size if file.is_file() else 0
        with progress_bar(f"add {file.name}", size) as progress:
            result = node.add(file, storage_class, convergent=convergent, progress=progress)
    m = result.manifest
    data = {
        "object_id": m.object_id.hex(),
        "read_cap": str(result.read_cap),
        "verify_cap": str(result.read_cap.verify_cap),
        "name": result.name,
        "size": m.size,
        "class": result.storage_class,
        "segments": m.segment_count,
        "blocks": len(m.block_ids) // 32 + 1,
        "new_bytes": result.new_bytes,
    }
    if json:
        print_json(data)
        return
    out.print(f"Added {result.name} ({format_size(m.size)}, class {result.storage_class})")
    out.print(f"object ID: {data['object_id']}")
    out.print(f"read cap:  {data['read_cap']}")


@app.command()
def get(
    ctx: typer.Context,
    cap: Annotated[str, typer.Argument(help="Read cap (pcr1_…), or object ID / prefix of an object added here.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the file.")] = None,
    json: JsonFlag = False,
) -> None:
    """Fetch an object, verify every block, decrypt it, and write it atomically."""
    with _open(ctx) as node:
        cap_obj = node.resolve(cap)
        size = node.manifest(cap_obj.object_id).size
        with progress_bar("get", size) as progress:
            path, manifest = node.get(cap, output, progress)
    if json:
        print_json({"object_id": manifest.object_id.hex(), "path": str(path), "size": manifest.size})
    else:
        out.print(f"Wrote {path} ({format_size(manifest.size)}, every block verified)")


@app.command("ls")
def list_objects(ctx: typer.Context, json: JsonFlag = False) -> None:
    """List objects known to this node, with size, class and % held locally."""
    with _open(ctx) as node:
        records = node.objects()
    if json:
        print_json(
            [
                {
                    "object_id": r.object_id.hex(),
                    "name": r.name,
                    "size": r.size,
                    "class": r.storage_class,
                    "local_percent": round(r.local_percent, 2),
                    "added_at": r.added_at,
                    "readable": r.read_key is not None,
                }
                for r in records
            ]
        )
        return
    if not records:
        out.print("No objects yet. Add one with `peercloud add FILE`.")
        return
    table = Table("object", "name", "size", "class", "local", box=None)
    for r in records:
        table.add_row(r.object_id.hex()[:12], r.name, format_size(r.size), r.storage_class, f"{r.local_percent:.0f}%")
    out.print(table)


@app.command()
def info(
    ctx: typer.Context,
    obj: Annotated[str, typer.Argument(help="Object ID, ID prefix, or cap.")],
    json: JsonFlag = False,
) -> None:
    """Show an object's manifest summary and what this node holds of it."""
    with _open(ctx) as node:
        i = node.info(obj)
    m, r = i.manifest, i.record
    data: dict[str, Any] = {
        "object_id": m.object_id.hex(),
        "verify_cap": str(i.read_cap.verify_cap) if i.read_cap else None,
        "read_cap": str(i.read_cap) if i.read_cap else None,
        "name": r.name if r else None,
        "class": r.storage_class if r else None,
        "size": m.size,
        "segment_size": m.segment_size,
        "segments": m.segment_count,
        "cipher": m.cipher,
        "coding": {"k": m.coding.k, "n": m.coding.n},
        "blocks": len(m.block_ids) // 32,
        "leaf_size": m.leaf_size,
        "manifest_bytes": len(m.encode()),
        "stored_bytes": m.stored_size,
        "local_percent": round(r.local_percent, 2) if r else None,
    }
    if data["verify_cap"] is None:
        from peercloud.content.caps import VerifyCap

        data["verify_cap"] = str(VerifyCap(m.object_id))
    if json:
        print_json(data)
        return
    coding = "none (one block per segment)" if m.coding.is_replica else f"{m.coding.k}-of-{m.coding.n} (zfec)"
    rows = [
        ("object ID", data["object_id"]),
        ("name", data["name"] or "(unknown here)"),
        ("class", data["class"] or "(unknown here)"),
        ("size", f"{format_size(m.size)} ({m.size} bytes)"),
        ("segments", f"{m.segment_count} × {format_size(m.segment_size)}"),
        ("cipher", m.cipher),
        ("erasure code", coding),
        ("blocks", f"{data['blocks']} + manifest ({data['manifest_bytes']} bytes)"),
        ("stored size", f"{format_size(m.stored_size)} per copy of every block"),
        ("local", f"{data['local_percent']:.0f}%" if r else "manifest only"),
        ("verify cap", data["verify_cap"]),
        ("read cap", data["read_cap"] or "(not known here)"),
    ]
    for k, v in rows:
        out.print(f"{k:<13} {v}", markup=False)


@app.command()
def fsck(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Verify every stored block; quarantine bad ones. Exit code 1 when damage was found."""
    with _open(ctx) as node:
        report = node.fsck()
        names = {r.object_id: r.name for r in node.objects()}
    if json:
        print_json(
            {
                "ok": not report.damaged,
                "blocks_checked": report.blocks_checked,
                "bytes_checked": report.bytes_checked,
                "corrupt": [b.hex() for b in report.corrupt],
                "missing": [b.hex() for b in report.missing],
                "strays_removed": report.strays_removed,
                "damaged_objects": [
                    {"object_id": oid.hex(), "name": name, "recoverable": rec}
                    for oid, name, rec in report.damaged_objects
                ],
            }
        )
    else:
        out.print(f"Checked {report.blocks_checked} blocks ({format_size(report.bytes_checked)}).")
        for bid in report.corrupt:
            out.print(f"[red]corrupt[/red] block {bid.hex()}: moved to quarantine/")
        for bid in report.missing:
            out.print(f"[red]missing[/red] block {bid.hex()}: removed from the index")
        if report.strays_removed:
            out.print(f"Removed {report.strays_removed} leftover files of interrupted writes.")
        for oid, _name, rec in report.damaged_objects:
            state = "recoverable from the blocks left" if rec else "blocks lost; fetch them from a peer"
            out.print(f"object {oid.hex()[:12]} ({names.get(oid, '?')}): {state}")
        out.print("[green]No damage found.[/green]" if not report.damaged else "[red]Damage found.[/red]")
    if report.damaged:
        raise typer.Exit(1)


@app.command()
def demo() -> None:
    """Run a narrated tour on a throw-away node."""
    from peercloud.demo import run

    raise typer.Exit(run())


def main() -> None:
    """Console entry point: run the app, turning expected failures into one line and an exit code."""
    try:
        app()
    except PeercloudError as e:
        err.print(f"error: {e}", markup=False)
        sys.exit(e.exit_code)
    except OSError as e:
        detail = f"{e.strerror}: {e.filename}" if e.filename else str(e.strerror or e)
        err.print(f"error: {detail}", markup=False)
        sys.exit(1)
