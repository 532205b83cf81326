"""`peercloud peers …`: the peers this node connects to (through the daemon when it runs)."""

from typing import Annotated

import typer
from rich.table import Table

from peercloud.cli.backend import open_backend
from peercloud.cli.output import JsonFlag, node_home, out, print_json
from peercloud.units import format_size

peers_app = typer.Typer(help="Peers this node connects to.", invoke_without_command=True)


@peers_app.callback()
def peers(ctx: typer.Context, json: JsonFlag = False) -> None:
    """List peers: ID, address, path (lan, direct, mapped, punched, relayed), RTT, rates, traffic, blocks held."""
    if ctx.invoked_subcommand is not None:
        return
    with open_backend(node_home(ctx)) as backend:
        rows = backend.peers()
    if json:
        print_json(rows)
        return
    if not rows:
        out.print("No peers yet. Add one with `peercloud peers add PEERID@HOST:PORT`.")
        return
    table = Table("peer", "address", "path", "rtt", "rate in / out", "in / out", "blocks held", box=None)
    for col in table.columns:
        col.no_wrap = True
    for r in rows:
        rtt = f"{r['rtt_ms']:.1f} ms" if r["rtt_ms"] is not None else "-"
        path = "banned" if r["banned"] else r["path"] or "not connected"
        if r["via"]:
            path += f" via {r['via'][:13]}"
        table.add_row(
            r["peer_id"][:13],
            r["address"] or "-",
            path,
            rtt,
            f"{format_size(r['rate_in'])}/s / {format_size(r['rate_out'])}/s",
            f"{format_size(r['bytes_in'])} / {format_size(r['bytes_out'])}",
            str(r["blocks_held"]),
        )
    out.print(table)


@peers_app.command("add")
def peers_add(
    ctx: typer.Context, peer: Annotated[str, typer.Argument(help="PEERID@HOST:PORT")], json: JsonFlag = False
) -> None:
    """Remember a peer and keep connecting to it (with backoff)."""
    with open_backend(node_home(ctx)) as backend:
        data = backend.add_peer(peer)
    if json:
        print_json(data)
    else:
        out.print(f"Added peer {data['peer_id']} at {data['address']}")


@peers_app.command("rm")
def peers_rm(ctx: typer.Context, peer: Annotated[str, typer.Argument(help="Peer ID")], json: JsonFlag = False) -> None:
    """Forget a peer and disconnect from it."""
    with open_backend(node_home(ctx)) as backend:
        data = backend.remove_peer(peer)
    if json:
        print_json(data)
    else:
        out.print(f"Removed peer {data['removed']}")
