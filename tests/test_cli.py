import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from peercloud.content import cipher
from peercloud.content.caps import ReadCap
from peercloud.identity import Identity, PeerId

from .conftest import run_cli


def add_json(home: Path, file: Path, *extra: str) -> dict[str, object]:
    proc = run_cli(home, "add", str(file), "--json", *extra, check=True)
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def assert_one_line_error(proc: object, code: int | None = None) -> str:
    assert proc.returncode != 0  # type: ignore[attr-defined]
    if code is not None:
        assert proc.returncode == code  # type: ignore[attr-defined]
    err: str = proc.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_init_creates_node_and_never_overwrites_key(tmp_path: Path) -> None:
    home = tmp_path / "n"
    first = run_cli(home, "init", "--json", check=True)
    info = json.loads(first.stdout)
    assert info["created"] is True
    key = home / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (home / "config.toml").is_file()
    assert (home / "blocks").is_dir()
    assert sqlite3.connect(home / "index.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    before = key.read_bytes()
    again = json.loads(run_cli(home, "init", "--json", check=True).stdout)
    assert again["created"] is False
    assert again["peer_id"] == info["peer_id"]
    assert key.read_bytes() == before
    printed = run_cli(home, "id", check=True).stdout.strip()
    assert printed == info["peer_id"]
    assert str(PeerId.parse(printed)) == printed


def test_home_from_environment(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "PEERCLOUD_HOME": str(tmp_path / "envhome")}
    subprocess.run([sys.executable, "-m", "peercloud", "init"], env=env, check=True, capture_output=True)
    assert (tmp_path / "envhome" / "node.key").exists()


@pytest.mark.parametrize("cls", ["replica-3", "ec-2+1", "ec-4+2"])
def test_add_get_round_trip(home: Path, make_file: Callable[..., Path], tmp_path: Path, cls: str) -> None:
    src = make_file(3 * 1024 * 1024 + 12345)
    added = add_json(home, src, "--class", cls)
    assert added["class"] == cls
    assert added["size"] == src.stat().st_size
    assert added["name"] == "data.bin"
    for key in ("object_id", "read_cap", "verify_cap"):
        assert isinstance(added[key], str)
    out = tmp_path / "out.bin"
    run_cli(home, "get", str(added["read_cap"]), "-o", str(out), check=True)
    assert out.read_bytes() == src.read_bytes()
    listing = json.loads(run_cli(home, "ls", "--json", check=True).stdout)
    assert [(o["object_id"], o["class"], o["local_percent"]) for o in listing] == [(added["object_id"], cls, 100.0)]
    info = json.loads(run_cli(home, "info", str(added["object_id"])[:10], "--json", check=True).stdout)
    k, n = (1, 1) if cls.startswith("replica") else (int(cls[3]), int(cls[3]) + int(cls[5]))
    assert info["coding"] == {"k": k, "n": n}
    assert info["segments"] == 4
    assert info["blocks"] == 4 * n
    assert run_cli(home, "fsck", check=True).returncode == 0


def test_get_by_object_id_uses_stored_name(home: Path, make_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_file(1000, name="notes.txt")
    added = add_json(home, src)
    workdir = tmp_path / "w"
    workdir.mkdir()
    run_cli(home, "get", str(added["object_id"]), check=True, cwd=workdir)
    assert (workdir / "notes.txt").read_bytes() == src.read_bytes()
    assert sorted(os.listdir(workdir)) == ["notes.txt"]


def test_empty_file_and_convergent_dedupe(home: Path, make_file: Callable[..., Path], tmp_path: Path) -> None:
    empty = make_file(0, name="empty")
    added = add_json(home, empty)
    run_cli(home, "get", str(added["read_cap"]), "-o", str(tmp_path / "e.out"), check=True)
    assert (tmp_path / "e.out").read_bytes() == b""
    src = make_file(2_500_000, name="a")
    first = add_json(home, src, "--convergent")
    second = add_json(home, src, "--convergent")
    assert first["object_id"] == second["object_id"]
    assert second["new_bytes"] == 0
    assert add_json(home, src)["object_id"] != first["object_id"]  # random key by default


def test_bad_caps_fail_cleanly(home: Path, make_file: Callable[..., Path], tmp_path: Path) -> None:
    added = add_json(home, make_file(100_000))
    out = tmp_path / "o"
    oid = bytes.fromhex(str(added["object_id"]))
    wrong_key = str(ReadCap(oid, cipher.random_key()))
    err = assert_one_line_error(run_cli(home, "get", wrong_key, "-o", str(out)), 5)
    assert "key" in err
    assert_one_line_error(run_cli(home, "get", "pcr1_thisisnotacap", "-o", str(out)), 2)
    assert_one_line_error(run_cli(home, "get", str(added["read_cap"])[:-2] + "zz", "-o", str(out)), 2)
    unknown = str(ReadCap(os.urandom(32), cipher.random_key()))
    assert "unknown object" in assert_one_line_error(run_cli(home, "get", unknown, "-o", str(out)), 3)
    # The owner's node knows the key, so its own verify cap reads; another node's cannot.
    run_cli(home, "get", str(added["verify_cap"]), "-o", str(out), check=True)
    out.unlink()
    assert_one_line_error(run_cli(home, "info", "nonsense"), 2)
    assert_one_line_error(run_cli(home, "add", str(tmp_path / "missing")), 3)
    assert_one_line_error(run_cli(home, "add", str(tmp_path), "--class", "replica-3"))
    assert "known classes" in assert_one_line_error(run_cli(home, "add", str(tmp_path / "data.bin"), "--class", "x"))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_no_node_says_run_init(tmp_path: Path) -> None:
    err = assert_one_line_error(run_cli(tmp_path / "nothing", "ls"), 3)
    assert "peercloud init" in err


def _block_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "blocks").rglob("*") if p.is_file())


def _data_blocks(home: Path, object_id: str) -> list[Path]:
    """Block files of an object's data (not its manifest), in manifest order."""
    db = sqlite3.connect(home / "index.sqlite")
    rows = db.execute(
        "SELECT block_id FROM object_blocks WHERE object_id = ? AND segment >= 0 ORDER BY segment, share",
        (bytes.fromhex(object_id),),
    ).fetchall()
    return [home / "blocks" / r[0].hex()[:2] / r[0].hex() for r in rows]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_block_refused_and_found_by_fsck(
    home: Path, make_file: Callable[..., Path], tmp_path: Path, damage: str
) -> None:
    added = add_json(home, make_file(2_200_000), "--class", "replica-1")
    victim = _data_blocks(home, str(added["object_id"]))[1]
    raw = bytearray(victim.read_bytes())
    if damage == "flip":
        raw[1234] ^= 0x10
        victim.write_bytes(bytes(raw))
    else:
        victim.write_bytes(bytes(raw[: len(raw) // 2]))
    out = tmp_path / "o"
    err = assert_one_line_error(run_cli(home, "get", str(added["read_cap"]), "-o", str(out)), 5)
    assert victim.name in err
    assert not out.exists()
    proc = run_cli(home, "fsck", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["corrupt"] == [victim.name]
    assert report["ok"] is False
    assert report["damaged_objects"][0]["recoverable"] is False
    assert (home / "quarantine" / victim.name).exists()
    assert not victim.exists()


def test_erasure_coded_object_survives_a_bad_share(home: Path, make_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_file(1_500_000)
    added = add_json(home, src, "--class", "ec-2+1")
    blocks = _data_blocks(home, str(added["object_id"]))
    blocks[0].write_bytes(b"garbage")  # segment 0, share 0
    blocks[4].unlink()  # segment 1, share 1
    out = tmp_path / "o"
    run_cli(home, "get", str(added["read_cap"]), "-o", str(out), check=True)
    assert out.read_bytes() == src.read_bytes()
    report = json.loads(run_cli(home, "fsck", "--json").stdout)
    assert len(report["corrupt"]) == 1
    assert len(report["missing"]) == 1
    assert report["damaged_objects"][0]["recoverable"] is True


def test_quota_reached_mid_add_leaves_nothing(home: Path, make_file: Callable[..., Path]) -> None:
    small = add_json(home, make_file(100_000, name="small"))
    config = home / "config.toml"
    config.write_text(config.read_text().replace('quota = "none"', 'quota = "3MiB"'))
    before = _block_files(home)
    err = assert_one_line_error(run_cli(home, "add", str(make_file(8_000_000, name="big"))), 4)
    assert "quota" in err
    assert _block_files(home) == before
    listing = json.loads(run_cli(home, "ls", "--json", check=True).stdout)
    assert [o["object_id"] for o in listing] == [small["object_id"]]
    assert run_cli(home, "fsck").returncode == 0


def test_bad_config_is_named(home: Path) -> None:
    (home / "config.toml").write_text('[store]\nquota = "lots"\n')
    err = assert_one_line_error(run_cli(home, "ls"), 2)
    assert "store.quota" in err
    (home / "config.toml").write_text("[store\n")
    assert "not valid TOML" in assert_one_line_error(run_cli(home, "ls"))


def test_human_output(home: Path, make_file: Callable[..., Path]) -> None:
    proc = run_cli(home, "add", str(make_file(5000, name="hello.txt")), "--class", "ec-2+1", check=True)
    assert "read cap:  pcr1_" in proc.stdout
    ls = run_cli(home, "ls", check=True).stdout
    assert "hello.txt" in ls
    assert "ec-2+1" in ls
    assert "100%" in ls
    fsck = run_cli(home, "fsck", check=True).stdout
    assert "No damage found" in fsck


def test_get_without_o_keeps_another_file(home: Path, make_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_file(5000, name="report.txt")
    added = add_json(home, src)
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "report.txt").write_text("someone else's report")
    refused = run_cli(home, "get", str(added["object_id"]), cwd=workdir)
    assert refused.returncode == 2 and "report.txt exists here" in refused.stderr and "--force" in refused.stderr
    assert (workdir / "report.txt").read_text() == "someone else's report"  # untouched
    assert sorted(os.listdir(workdir)) == ["report.txt"]  # and no temporary file left
    run_cli(home, "get", str(added["object_id"]), "--force", check=True, cwd=workdir)
    assert (workdir / "report.txt").read_bytes() == src.read_bytes()
    # An output that cannot be written is named as the user gave it, never by our temporary name.
    missing = run_cli(home, "get", str(added["read_cap"]), "-o", str(tmp_path / "no" / "such" / "out"))
    assert missing.returncode != 0 and str(tmp_path / "no" / "such" / "out") in missing.stderr
    assert ".part" not in missing.stderr


def test_short_ids_home_anywhere_and_json_errors(home: Path, make_file: Callable[..., Path], tmp_path: Path) -> None:
    ids = [str(Identity.generate().peer_id) for _ in range(2)]
    for i, pid in enumerate(ids):
        run_cli(home, "peers", "add", f"{pid}@127.0.0.1:{4000 + i}", check=True)
    # A peer as tables show it (its first 13 characters), in any case, where it is unique.
    removed = json.loads(run_cli(home, "peers", "rm", ids[0][:13].upper(), "--json", check=True).stdout)
    assert removed == {"removed": ids[0]}
    unknown = run_cli(home, "peers", "rm", "peer_zzzzzzzz")
    assert unknown.returncode == 3 and "no known peer starts with" in unknown.stderr
    # --home after the subcommand, as before it.
    added = add_json(home, make_file(2000, name="h.txt"))
    moved = subprocess.run(
        [sys.executable, "-m", "peercloud", "ls", "--json", "--home", str(home)], capture_output=True, text=True
    )
    assert moved.returncode == 0 and json.loads(moved.stdout)[0]["object_id"] == added["object_id"]
    # Object ID prefixes in upper case; with --json, an error is JSON on stderr.
    info = json.loads(run_cli(home, "info", str(added["object_id"])[:10].upper(), "--json", check=True).stdout)
    assert info["object_id"] == added["object_id"]
    missing = run_cli(home, "info", "abcdef", "--json")
    assert missing.returncode == 3 and json.loads(missing.stderr) == {
        "error": "no object with ID starting 'abcdef' on this node",
        "exit_code": 3,
    }
