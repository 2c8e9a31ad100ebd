"""The ``hub-signature`` scheme (DESIGN.md section 2): HMAC-SHA256 over ``f"{t}.{source}." + value``."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from hub.errors import ErrorCode
from hub.ingest.signature import sign, signed_message, verify

SOURCE = "gp-cabinet-lamentin"
SECRET = b"gp-unit-test-secret-0123456789abcdef"
OLD_SECRET = b"gp-retiring-secret-abcdef0123456789"
VALUE = b'{"resourceType":"Patient","id":"pat-dupont"}'
NOW = 1_714_730_400  # 2024-05-03T10:00:00Z
TOLERANCE = 300


def check(
    header: str | None,
    *,
    secrets: tuple[bytes, ...] = (SECRET,),
    source_id: str = SOURCE,
    value: bytes = VALUE,
    now: int = NOW,
) -> ErrorCode | None:
    result = verify(
        header, secrets=secrets, source_id=source_id, value=value, now=now, tolerance_seconds=TOLERANCE
    )
    return None if result is None else result[0]


def test_signed_message_is_timestamp_source_value() -> None:
    """The MAC covers exactly ``<t>.<source>.`` followed by the raw value bytes."""
    assert signed_message(NOW, SOURCE, VALUE) == f"{NOW}.{SOURCE}.".encode() + VALUE


def test_sign_produces_the_contract_header() -> None:
    """``sign`` writes ``t=<unix seconds>,v1=<64 lower-case hex>`` with HMAC-SHA256 of the signed message."""
    header = sign(SECRET, SOURCE, VALUE, NOW)
    expected = hmac.new(SECRET, f"{NOW}.{SOURCE}.".encode() + VALUE, hashlib.sha256).hexdigest()
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert header == f"t={NOW},v1={expected}"


def test_valid_signature_is_accepted() -> None:
    """A fresh signature made with the source's key over the exact value verifies."""
    assert check(sign(SECRET, SOURCE, VALUE, NOW)) is None


@pytest.mark.parametrize("header", [None, ""], ids=["absent", "empty"])
def test_missing_signature(header: str | None) -> None:
    """No ``hub-signature`` header (or an empty one) is ``signature.missing``."""
    assert check(header) is ErrorCode.SIGNATURE_MISSING


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "v1=" + "0" * 64,
        f"t={NOW}",
        f"t=yesterday,v1={'0' * 64}",
        f"t=-{NOW},v1={'0' * 64}",
        f"t=1{NOW}000,v1={'0' * 64}",  # more than 12 digits
        f"t=²,v1={'0' * 64}",  # a Unicode digit that int() refuses: must not raise
        f"t=١٧١٤٧٣٠٤٠٠,v1={'0' * 64}",  # Arabic-Indic digits are not the contract's unix seconds
        f"t={NOW};v1={'0' * 64}",
    ],
)
def test_malformed_header_is_invalid(header: str) -> None:
    """A header that is not ``t=<ascii digits>,v1=<hex>`` is ``signature.invalid``, never an exception."""
    assert check(header) is ErrorCode.SIGNATURE_INVALID


def test_wrong_key_is_invalid() -> None:
    """A MAC made with a key the source does not hold is ``signature.invalid``."""
    assert (
        check(sign(b"someone-else-key-0123456789abcdef", SOURCE, VALUE, NOW)) is ErrorCode.SIGNATURE_INVALID
    )


def test_tampered_value_is_invalid() -> None:
    """Changing one byte of the value after signing breaks the signature."""
    header = sign(SECRET, SOURCE, VALUE, NOW)
    assert check(header, value=VALUE.replace(b"dupont", b"dupond")) is ErrorCode.SIGNATURE_INVALID


def test_no_replay_across_sources() -> None:
    """A signature made for one source id does not verify for another, even with the same key."""
    header = sign(SECRET, SOURCE, VALUE, NOW)
    assert check(header, source_id="chu-guadeloupe") is ErrorCode.SIGNATURE_INVALID


def test_timestamp_is_covered_by_the_mac() -> None:
    """Moving ``t`` to a fresh time without re-signing is ``signature.invalid`` (no refresh of old MACs)."""
    old = sign(SECRET, SOURCE, VALUE, NOW - 3600)
    refreshed = old.replace(f"t={NOW - 3600}", f"t={NOW}")
    assert check(refreshed) is ErrorCode.SIGNATURE_INVALID


@pytest.mark.parametrize("skew", [-TOLERANCE - 1, -86_400, TOLERANCE + 1, 86_400], ids=str)
def test_expired_beyond_tolerance(skew: int) -> None:
    """A valid MAC whose time is beyond the tolerance from the hub's clock, past or future, is expired."""
    assert check(sign(SECRET, SOURCE, VALUE, NOW + skew)) is ErrorCode.SIGNATURE_EXPIRED


@pytest.mark.parametrize("skew", [-TOLERANCE, -1, 1, TOLERANCE], ids=str)
def test_within_tolerance(skew: int) -> None:
    """Clock skew up to the tolerance, either way, is accepted."""
    assert check(sign(SECRET, SOURCE, VALUE, NOW + skew)) is None


def test_mac_is_checked_before_the_clock() -> None:
    """A forged, stale header is ``signature.invalid``: freshness is only reported for genuine MACs."""
    forged = sign(b"someone-else-key-0123456789abcdef", SOURCE, VALUE, NOW - 86_400)
    assert check(forged) is ErrorCode.SIGNATURE_INVALID


def test_expired_detail_names_the_skew() -> None:
    """The expired detail tells the sender how far off its clock is and the tolerance."""
    result = verify(
        sign(SECRET, SOURCE, VALUE, NOW - 400),
        secrets=(SECRET,),
        source_id=SOURCE,
        value=VALUE,
        now=NOW,
        tolerance_seconds=TOLERANCE,
    )
    assert result is not None
    assert "400 s" in result[1]
    assert "300 s" in result[1]


@pytest.mark.parametrize("signing_key", [OLD_SECRET, SECRET], ids=["old key", "new key"])
def test_second_key_accepted_during_rotation(signing_key: bytes) -> None:
    """During a rotation's overlap the source holds two keys, and a signature with either verifies."""
    assert check(sign(signing_key, SOURCE, VALUE, NOW), secrets=(OLD_SECRET, SECRET)) is None


def test_retired_key_refused_after_rotation() -> None:
    """Once the old key is dropped from the source, its signatures are ``signature.invalid``."""
    assert check(sign(OLD_SECRET, SOURCE, VALUE, NOW), secrets=(SECRET,)) is ErrorCode.SIGNATURE_INVALID


def test_header_with_two_macs_verifies_when_one_matches() -> None:
    """A sender mid-rotation may send ``v1=`` twice; one matching MAC is enough."""
    good = sign(SECRET, SOURCE, VALUE, NOW)
    header = f"t={NOW},v1={'ab' * 32},v1={good.partition('v1=')[2]}"
    assert check(header) is None


def test_uppercase_hex_is_accepted() -> None:
    """The v1 hex digest is compared case-insensitively (some senders print upper-case hex)."""
    timestamp, _, mac = sign(SECRET, SOURCE, VALUE, NOW).partition(",v1=")
    assert check(f"{timestamp},v1={mac.upper()}") is None


def test_spaces_around_parts_are_tolerated() -> None:
    """``t=..., v1=...`` with a space after the comma verifies."""
    header = sign(SECRET, SOURCE, VALUE, NOW).replace(",", ", ")
    assert check(header) is None


def test_no_key_means_no_match() -> None:
    """A source with no key verifies nothing."""
    assert check(sign(SECRET, SOURCE, VALUE, NOW), secrets=()) is ErrorCode.SIGNATURE_INVALID
