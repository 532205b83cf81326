"""The `peercloud` command line: thin over the node, one clear line on stderr for every failure.

Commands go through the daemon when one runs for the node home (`peercloud up`), and work on
the home directly otherwise; commands that need the network say so when no daemon runs.
"""

# ruff: noqa: E402 - the Ctrl-C guard just below must run before the (slow) imports it guards

import atexit
import contextlib
import os
import signal
import sys
import threading
from types import FrameType


def _quiet_interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C before a command runs (imports take ~0.4 s) or while the process winds down: exit 130, silently."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reentrant flush must not turn into a traceback
            stream.flush()
    os._exit(130)


def quiet_interrupts() -> bool:
    """Send Ctrl-C to `_quiet_interrupt` where it would raise KeyboardInterrupt; True if it did."""
    if threading.current_thread() is not threading.main_thread():
        return False  # only the main thread may set handlers
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False  # ignored (a background job) or already someone's handler
    signal.signal(signal.SIGINT, _quiet_interrupt)
    return True


def interrupt_commands() -> None:
    """Make Ctrl-C raise KeyboardInterrupt again, so a running command cleans up (unless SIGINT is ignored)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _ignore_late_interrupts() -> None:
    """At exit, once threads are joined: the interpreter resets a Python SIGINT handler to the
    default action while it finalizes, so a Ctrl-C landing then would kill the process (status
    -2) after its command succeeded. An ignored signal is left ignored."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


_GUARDED_IMPORT = quiet_interrupts()  # the console script imports this module first thing
atexit.register(_ignore_late_interrupts)  # registered first, so it runs last

import http.client
import json as json_module
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from peercloud import __version__
from peercloud.cli import buckets as bucket_commands
from peercloud.cli import cloud as cloud_commands
from peercloud.cli import peers as peers_commands
from peercloud.cli.backend import open_backend
from peercloud.cli.output import JsonFlag, block_map, err, node_home, out, print_json, progress_bar
from peercloud.errors import PeercloudError, UsageError
from peercloud.node.home import HOME_ENV, NodeHome
from peercloud.units import format_size

if _GUARDED_IMPORT:  # importers (tests) get KeyboardInterrupt back
    interrupt_commands()

DEFAULT_LISTEN = "0.0.0.0:4650"  # `peercloud up`: where peers connect
DEFAULT_API = "127.0.0.1:4651"  # and the local REST API

app = typer.Typer(
    name="peercloud",
    help="A storage cloud made of ordinary peers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(peers_commands.peers_app, name="peers")
app.add_typer(cloud_commands.cloud_app, name="cloud")
app.add_typer(cloud_commands.class_app, name="class")
app.add_typer(bucket_commands.bucket_app, name="bucket")
app.command("put")(bucket_commands.put)
app.command("mv")(bucket_commands.move)


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


def _peer_id(home: NodeHome) -> str:
    from peercloud.identity import Identity  # cryptography: only the commands that read the key

    return str(Identity.load(home.key_path).peer_id)


@app.command()
def init(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Create a node home: key, config, index and block folder. Never replaces an existing key."""
    home = node_home(ctx)
    created = home.init()
    peer_id = _peer_id(home)
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
    home = node_home(ctx)
    home.require()
    peer_id = _peer_id(home)
    if json:
        print_json({"peer_id": str(peer_id)})
    else:
        out.print(str(peer_id))


@app.command()
def up(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option(help="Where peers connect (HOST:PORT; port 0 picks one).")] = DEFAULT_LISTEN,
    api: Annotated[str, typer.Option(help="Local REST API (HOST:PORT).")] = DEFAULT_API,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log connections and transfers.")] = False,
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="Also serve others: `directory`, `relay` (repeat --role to combine roles)."),
    ] = None,
) -> None:
    """Run the node in the foreground: serve peers and the local API until Ctrl-C or SIGTERM."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from peercloud.net.link import Address
    from peercloud.node import daemon, network  # FastAPI and the whole node: only `up` pays for their import

    unknown = set(role or ()) - network.ROLES
    if unknown:
        raise UsageError(f"unknown role(s) {sorted(unknown)}: choose from {sorted(network.ROLES)}")

    home = node_home(ctx)
    daemon.serve(home, Address.parse(listen), Address.parse(api), lambda line: out.print(line), frozenset(role or ()))


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
    with open_backend(node_home(ctx)) as backend, progress_bar(f"add {file.name}") as progress:
        data = backend.add(file, storage_class, convergent, progress)
    if json:
        print_json(data)
        return
    out.print(f"Added {data['name']} ({format_size(data['size'])}, class {data['class']})")
    out.print(f"object ID: {data['object_id']}")
    out.print(f"read cap:  {data['read_cap']}")


@app.command()
def get(
    ctx: typer.Context,
    cap: Annotated[
        str, typer.Argument(help="Read cap (pcr1_…), object ID / prefix known here, BUCKET/KEY or BUCKET/PREFIX/.")
    ],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the file (or folder).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Without -o: replace a file of the object's name here.")
    ] = False,
    json: JsonFlag = False,
) -> None:
    """Fetch an object or a bucket's key (from peers when the daemon runs), verify every block,
    decrypt, write atomically."""
    if "/" in cap:
        bucket_commands.get_key(ctx, cap, output, json)
        return
    with open_backend(node_home(ctx)) as backend, progress_bar("get") as progress:
        data = backend.get(cap, output, progress, force)
    if json:
        print_json(data)
    else:
        out.print(f"Wrote {data['path']} ({format_size(data['size'])}, every block verified)")


@app.command()
def pin(
    ctx: typer.Context,
    obj: Annotated[str, typer.Argument(help="Verify cap, read cap or object ID.")],
    json: JsonFlag = False,
) -> None:
    """Fetch and keep every block of an object (a verify cap is enough): its redundancy rises by one."""
    with open_backend(node_home(ctx)) as backend, progress_bar("pin") as progress:
        data = backend.pin(obj, progress)
    if json:
        print_json(data)
    else:
        out.print(f"Pinned {data['object_id'][:12]}: all {data['blocks']} blocks held here")


@app.command("ls")
def list_objects(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Argument(help="BUCKET or BUCKET/PREFIX: list its keys.")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Every key under the prefix.")] = False,
    json: JsonFlag = False,
) -> None:
    """List objects known to this node (size, class, % held locally), or a bucket's keys."""
    if target is not None:
        bucket_commands.list_keys(ctx, target, recursive, json)
        return
    with open_backend(node_home(ctx)) as backend:
        rows = backend.objects()
    if json:
        print_json(rows)
        return
    if not rows:
        out.print("No objects yet. Add one with `peercloud add FILE`.")
        return
    table = Table("object", "name", "size", "class", "local", box=None)
    for r in rows:
        table.add_row(r["object_id"][:12], r["name"], format_size(r["size"]), r["class"], f"{r['local_percent']:.0f}%")
    out.print(table)


@app.command()
def info(
    ctx: typer.Context,
    obj: Annotated[str, typer.Argument(help="Object ID, ID prefix, cap, or BUCKET/KEY.")],
    json: JsonFlag = False,
) -> None:
    """Show an object's manifest summary and what this node holds of it."""
    if "/" in obj:
        obj = bucket_commands.object_of(ctx, obj)
    with open_backend(node_home(ctx)) as backend:
        d = backend.info(obj)
    if json:
        print_json(d)
        return
    k, n = d["coding"]["k"], d["coding"]["n"]
    rows = [
        ("object ID", d["object_id"]),
        ("name", d["name"] or "(unknown here)"),
        ("class", d["class"] or "(unknown here)"),
        ("size", f"{format_size(d['size'])} ({d['size']} bytes)"),
        ("segments", f"{d['segments']} × {format_size(d['segment_size'])}"),
        ("cipher", d["cipher"]),
        ("erasure code", "none (one block per segment)" if n == 1 else f"{k}-of-{n} (zfec)"),
        ("blocks", f"{d['blocks']} + manifest ({d['manifest_bytes']} bytes)"),
        ("stored size", f"{format_size(d['stored_bytes'])} per copy of every block"),
        ("local", f"{d['local_percent']:.0f}%" if d["local_percent"] is not None else "manifest only"),
        ("verify cap", d["verify_cap"]),
        ("read cap", d["read_cap"] or "(not known here)"),
    ]
    for key, value in rows:
        out.print(f"{key:<13} {value}", markup=False)


@app.command()
def status(
    ctx: typer.Context,
    obj: Annotated[
        str | None, typer.Argument(help="Object ID, prefix, cap or BUCKET/KEY; omit for every object.")
    ] = None,
    node: Annotated[bool, typer.Option("--node", help="Show the daemon: uptime, addresses, peers, traffic.")] = False,
    json: JsonFlag = False,
) -> None:
    """The ledger: an object's block-by-holder map and health, every object's health, or the node."""
    if obj is not None and "/" in obj:
        obj = bucket_commands.object_of(ctx, obj)
    with open_backend(node_home(ctx)) as backend:
        data = backend.node_status() if node else backend.status(obj) if obj else backend.summary()
    if json:
        print_json(data)
    elif node:
        _print_node(data)
    elif obj:
        _print_object_status(data)
    else:
        _print_summary(data)


@app.command()
def unpin(
    ctx: typer.Context,
    obj: Annotated[str, typer.Argument(help="Object ID, prefix or cap.")],
    json: JsonFlag = False,
) -> None:
    """Drop this node's copy of an object, unless that would leave it below its class minimum."""
    with open_backend(node_home(ctx)) as backend:
        data = backend.unpin(obj)
    if json:
        print_json(data)
    else:
        out.print(f"Unpinned {data['object_id'][:12]}: now {data['health']}, {data['complete_copies']} complete copies")


@app.command("rm")
def rm(
    ctx: typer.Context,
    obj: Annotated[str, typer.Argument(help="Object ID, prefix or cap; or BUCKET/KEY.")],
    force: Annotated[bool, typer.Option("--force", help="Delete an object even while a bucket names it.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="BUCKET/PREFIX/: every key under it.")] = False,
    json: JsonFlag = False,
) -> None:
    """Delete an object of the cloud (its owner or an admin): every holder is asked, and the report
    says who deleted it, who is offline, who refused, who kept it and who is outside your control.
    With BUCKET/KEY the name goes, and the object with it once none of your names points at it."""
    if "/" in obj:
        bucket_commands.remove_key(ctx, obj, recursive, json)
        return
    with open_backend(node_home(ctx)) as backend:
        data = backend.delete(obj, force)
    if json:
        print_json(data)
    else:
        _print_deletion(data)


@app.command()
def reclass(
    ctx: typer.Context,
    obj: Annotated[str, typer.Argument(help="Object ID, prefix or cap (the read cap when the coding changes).")],
    cls: Annotated[str, typer.Argument(metavar="CLASS", help="A class of the cloud (`peercloud class ls`).")],
    json: JsonFlag = False,
) -> None:
    """Put an object you own under another class: re-placed in place when the coding stays (replicas
    to replicas, the same k+m); made anew as a new object, and the old one deleted, across codings."""
    with open_backend(node_home(ctx)) as backend:
        data = backend.reclass(obj, cls)
    if json:
        print_json(data)
    elif data["new_object"]:
        out.print(
            f"{cls} codes blocks differently: made a new object {data['object_id']} (its read cap is in"
            f" `peercloud info {data['object_id'][:12]}`) and deleted {data['replaced'][:12]}"
        )
        _print_deletion(data["deletion"])
    else:
        out.print(f"{data['object_id'][:12]} is now {data['class']}: placement follows")


def _print_deletion(d: dict[str, Any]) -> None:
    oid = d["object_id"][:12]
    if d["other_owners"]:
        out.print(f"Removed your entry of {oid}: {d['other_owners']} other owner(s) keep it in the cloud.")
        return
    lists = ("deleted", "pending", "refused", "kept", "outside_control")
    out.print(f"Deleted {oid}: " + ", ".join(f"{len(d[k])} {k.replace('_', ' ')}" for k in lists))
    notes = {
        "pending": "offline: they delete it when they return",
        "refused": "they keep a copy they pinned by hand",
        "kept": "said deleted or said nothing, yet still prove blocks of it",
        "outside_control": "not members: they announced or fetched it, and nobody can make them delete it",
    }
    for key in lists:
        for peer in d[key]:
            out.print(f"  {key.replace('_', ' '):<16} {peer}  [dim]{notes.get(key, '')}[/]")


_HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "at risk": "red", "lost": "bold red"}


def _print_summary(d: dict[str, Any]) -> None:
    counts = d["counts"]
    out.print("   ".join(f"[{_HEALTH_STYLE[h]}]{h}[/] {n}" for h, n in counts.items()))
    if not d["objects"]:
        out.print("No objects yet. Add one with `peercloud add FILE`.")
        return
    table = Table("object", "name", "class", "size", "health", "redundancy", "copies", "local", box=None)
    for o in d["objects"]:
        table.add_row(
            o["object_id"][:12],
            o["name"] or "-",
            o["class"] or "-",
            format_size(o["size"]),
            f"[{_HEALTH_STYLE[o['health']]}]{o['health']}[/]",
            f"{o['available']}/{o['target']}",
            f"{o['distributed_copies']:.2f}",
            f"{o['local_percent']:.0f}%",
        )
    out.print(table)


def _print_node(d: dict[str, Any]) -> None:
    out.print(f"peer ID     {d['peer_id']}")
    out.print(f"version     {d['version']}, up {d['uptime']:.0f} s")
    out.print(f"listening   {', '.join(d['listen'])}")
    out.print(f"peers       {d['peers_connected']} connected of {d['peers_known']} known")
    out.print(f"traffic     in {format_size(d['bytes_in'])}, out {format_size(d['bytes_out'])}")
    out.print(f"store       {d['objects']} objects, {format_size(d['stored_bytes'])}")
    r = d["reachable"]
    where = ", ".join(f"{c['kind']} {c['address']}" for c in r["candidates"]) or "-"
    out.print(f"reachable   {where} (record seq {r['record_seq']})")
    if r["observed"]:
        out.print(f"observed    {', '.join(r['observed'])}")
    if r["upnp"]["mapped"]:
        out.print(f"mapped      {r['upnp']['mapped']} by the gateway at {r['upnp']['gateway']}")
    if r["relays"]:
        out.print(f"relays      {', '.join(x['relay'] for x in r['relays'])}")


def _print_object_status(d: dict[str, Any]) -> None:
    if "deletion" in d:
        _print_deletion(d["deletion"])
        return
    total = d["total_blocks"]
    k, n = d["coding"]["k"], d["coding"]["n"]
    coding = "replicated blocks" if n == 1 else f"erasure code {k}-of-{n}"
    out.print(f"object {d['object_id'][:16]}…  {d['name'] or ''}  {format_size(d['size'])}, {total} blocks, {coding}")
    r = d["redundancy"]
    unit = "copies" if n == 1 else "shares"
    out.print(
        f"class {d['class'] or '-'}   health [{_HEALTH_STYLE[d['health']]}]{d['health']}[/]   "
        f"{unit} online {r['available']}/{r['target']} (need {r['needed']})   "
        f"can lose {max(r['can_lose'], 0)} of {r['tolerance']} holders"
    )
    out.print(
        f"local {d['local_percent']:.0f}%   complete copies {d['complete_copies']}   "
        f"distributed copies {d['distributed_copies']:.2f}"
    )
    if d["note"]:
        out.print(f"[yellow]note:[/] {d['note']}")
    table = Table("holder", "online", "held", "proved", "audited", "blocks", box=None)
    for col in table.columns:
        col.no_wrap = True
    width = max(16, min(64, out.width - 62))
    now = time.time()
    for h in d["holders"]:
        who = h["peer_id"][:13] + (" (you)" if h["self"] else "" if h["member"] else " (outside)")
        style = "green" if h["self"] else "cyan" if h["online"] else "dim"
        proved = "failed audit" if h["failed_audit"] else f"{100 * len(h['confirmed']) / max(1, total):.0f}%"
        table.add_row(
            who,
            "yes" if h["online"] else "no",
            f"{h['percent']:.0f}%",
            proved,
            f"{now - h['checked_at']:.0f} s ago" if h.get("checked_at") else "-",
            f"[{style}]{block_map(h['blocks'], total, width)}[/{style}]",
        )
    out.print(table)


@app.command()
def fsck(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Verify every stored block; quarantine bad ones. Exit code 1 when damage was found."""
    with open_backend(node_home(ctx)) as backend:
        report = backend.fsck()
    if json:
        print_json(report)
    else:
        out.print(f"Checked {report['blocks_checked']} blocks ({format_size(report['bytes_checked'])}).")
        for bid in report["corrupt"]:
            out.print(f"[red]corrupt[/red] block {bid}: moved to quarantine/")
        for bid in report["missing"]:
            out.print(f"[red]missing[/red] block {bid}: removed from the index")
        if report["strays_removed"]:
            out.print(f"Removed {report['strays_removed']} leftover files of interrupted writes.")
        for o in report["damaged_objects"]:
            state = "recoverable from the blocks left" if o["recoverable"] else "blocks lost; fetch them from a peer"
            out.print(f"object {o['object_id'][:12]} ({o['name']}): {state}")
        out.print("[green]No damage found.[/green]" if report["ok"] else "[red]Damage found.[/red]")
    if not report["ok"]:
        raise typer.Exit(1)


@app.command()
def demo() -> None:
    """Run a narrated tour: several daemons on loopback sharing a file."""
    from peercloud.demo import run

    raise typer.Exit(run())


def home_first(args: list[str]) -> list[str]:
    """`--home DIR` is read by the root command, but users also type it after the subcommand
    (`peercloud ls --home n1`): wherever it is before `--`, it moves to the front."""
    end = args.index("--") if "--" in args else len(args)
    moved: list[str] = []
    rest: list[str] = []
    i = 0
    while i < end:
        if args[i] == "--home" and i + 1 < end:
            moved += args[i : i + 2]
            i += 2
            continue
        (moved if args[i].startswith("--home=") else rest).append(args[i])
        i += 1
    return moved + rest + args[end:]


def main() -> None:
    """Console entry point: run the app, turning expected failures into one line and an exit code.

    Ctrl-C ends with code 130 and no traceback wherever it lands: in a command (KeyboardInterrupt,
    so the command cleans up), before one starts, or while the interpreter winds down.
    """
    args = home_first(sys.argv[1:])
    as_json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args

    def fail(message: str, code: int) -> None:
        """One line on stderr: JSON when the command was asked for JSON, so scripts parse both."""
        if as_json:
            sys.stderr.write(json_module.dumps({"error": message, "exit_code": code}) + "\n")
        else:
            err.print(f"error: {message}", markup=False)
        sys.exit(code)

    try:
        try:
            interrupt_commands()  # also replaces the quiet handler `python -m peercloud` starts with
            app(args=args)
        except PeercloudError as e:
            fail(str(e), e.exit_code)
        except OSError as e:
            fail(f"{e.strerror}: {e.filename}" if e.filename else str(e.strerror or e), 1)
        except http.client.HTTPException as e:  # the daemon stopped in the middle of its answer
            fail(f"the daemon closed the connection mid-answer ({type(e).__name__})", 1)
    except KeyboardInterrupt:  # typer turns it into 130 inside a command; this covers the edges
        sys.exit(130)
    finally:
        quiet_interrupts()  # a Ctrl-C while threads are joined at exit must not print a traceback
