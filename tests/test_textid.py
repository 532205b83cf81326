"""Text IDs and caps have one form each: strings that only differ in unused bits are refused."""

import base64
from pathlib import Path

import pytest

from peercloud import textid
from peercloud.cloud.document import Invite
from peercloud.content import caps
from peercloud.content.caps import ReadCap
from peercloud.errors import UsageError
from peercloud.identity import PeerId

from .conftest import run_cli

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def raw_bytes(text: str) -> bytes:
    body = text.partition("_")[2].upper()
    return base64.b32decode(body + "=" * (-len(body) % 8))


def same_bytes_variants(text: str) -> list[str]:
    """Every string made by changing only the last character that still decodes to the same bytes."""
    raw = raw_bytes(text)
    out = []
    for c in ALPHABET:
        other = text[:-1] + c
        if other != text and raw_bytes(other) == raw:
            out.append(other)
    return out


PEER = str(PeerId(bytes(range(32))))
READ = str(ReadCap(bytes(range(32)), bytes(range(32, 64))))
VERIFY = str(ReadCap(bytes(range(32)), bytes(32)).verify_cap)


def test_each_kind_has_variants_that_only_differ_in_unused_bits() -> None:
    # 36 bytes = 288 bits in 58 characters: 2 unused bits; 68 bytes = 544 bits in 109: 1 unused bit
    assert len(same_bytes_variants(PEER)) == 3
    assert len(same_bytes_variants(VERIFY)) == 3
    assert len(same_bytes_variants(READ)) == 1


@pytest.mark.parametrize(
    ("text", "parse"),
    [(PEER, PeerId.parse), (READ, caps.parse), (VERIFY, caps.parse)],
    ids=["peer ID", "read cap", "verify cap"],
)
def test_a_changed_last_character_is_refused_even_when_the_bytes_are_equal(text: str, parse: object) -> None:
    assert callable(parse)
    parse(text)  # the canonical form parses
    parse(text.upper())  # so does its upper-case form (documented: case is ignored)
    parse(f"  {text}\n")
    for other in same_bytes_variants(text):
        with pytest.raises(UsageError, match="not canonical") as info:
            parse(other)
        assert info.value.exit_code == 2
        assert "last character was altered" in str(info.value)
        with pytest.raises(UsageError, match="not canonical"):
            parse(other.upper())


def test_an_invite_with_a_changed_last_character_is_refused() -> None:
    for n in range(1, 6):  # some address length leaves unused bits in the last character
        invite = Invite(bytes(16), PeerId(bytes(32)), ("h" * n + ":4650",), b"s" * 32, None)
        text = str(invite)
        if same_bytes_variants(text):
            break
    else:
        raise AssertionError("no invite length left unused bits")
    assert Invite.parse(text) == invite
    for other in same_bytes_variants(text):
        with pytest.raises(UsageError, match="not canonical") as info:
            Invite.parse(other)
        assert info.value.exit_code == 2


def test_every_payload_length_has_one_text_form() -> None:
    for size in range(0, 40):
        payload = bytes(range(size))
        text = textid.encode("t", payload)
        assert textid.decode("t", text, None, "thing") == payload
        assert text == text.lower() and "=" not in text
        for other in same_bytes_variants(text):
            with pytest.raises(ValueError, match="not canonical"):
                textid.decode("t", other, None, "thing")


def test_padding_is_refused() -> None:
    padded = PEER + "=" * (-len(PEER.partition("_")[2]) % 8)
    assert padded != PEER
    with pytest.raises(UsageError, match="padding"):
        PeerId.parse(padded)


def test_cli_refuses_non_canonical_text_with_exit_code_2(home: Path) -> None:
    for args in (
        ("peers", "rm", same_bytes_variants(PEER)[0]),
        ("info", same_bytes_variants(VERIFY)[0]),
        ("get", same_bytes_variants(READ)[0]),
    ):
        proc = run_cli(home, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "not canonical" in lines[0], proc.stderr
