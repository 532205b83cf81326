from pathlib import Path

import pytest

from peercloud.fsutil import write_atomic, write_new_file_direct

from .conftest import random_bytes

SIZES = [0, 1, 4095, 4096, 4097, 1024 * 1024 + 16, 3 * 1024 * 1024]


@pytest.mark.parametrize("size", SIZES)
def test_direct_write_round_trips(tmp_path: Path, size: int) -> None:
    data = random_bytes(size, size)
    path = tmp_path / "f"
    write_new_file_direct(path, data)
    assert path.read_bytes() == data
    write_new_file_direct(path, data[: size // 2])  # rewriting truncates
    assert path.read_bytes() == data[: size // 2]


def test_direct_write_falls_back_where_o_direct_is_refused() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no tmpfs at /dev/shm on this machine")
    path = shm / f"peercloud-test-{id(object())}"
    try:
        data = random_bytes(70_000, 3)
        write_new_file_direct(path, data)  # tmpfs refuses O_DIRECT with EINVAL
        assert path.read_bytes() == data
    finally:
        path.unlink(missing_ok=True)


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "config"
    write_atomic(path, b"old")
    write_atomic(path, b"new contents", mode=0o600)
    assert path.read_bytes() == b"new contents"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["config"]


@pytest.mark.parametrize("pieces", [[4096, 4096], [1000, 5000, 3000], [1024 * 1024, 1024 * 1024, 17], [0, 10]])
def test_direct_appender_writes_pieces_in_order(tmp_path: Path, pieces: list[int]) -> None:
    import os

    from peercloud.fsutil import DirectAppender

    chunks = [random_bytes(n, i) for i, n in enumerate(pieces)]
    path = tmp_path / "out"
    writer = DirectAppender.create(path)
    for c in chunks:
        writer.append(c)
    writer.finish()
    os.close(writer.fd)
    assert path.read_bytes() == b"".join(chunks)
