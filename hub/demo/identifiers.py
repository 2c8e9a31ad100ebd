"""Check keys of the French identifiers the demo feed carries (NIR, RPPS, FINESS)."""

from __future__ import annotations

#: Corsican department codes replace a digit of the NIR with a letter; the key is computed as if
#: 2A were 19 and 2B were 18 (INSEE rule).
_CORSICA = {"2A": "19", "2B": "18"}


def fr_nir_key(first13: str) -> str:
    """The two-digit key of a NIR: ``97 - (first 13 digits mod 97)``, zero-padded.

    ``first13`` is sex, year, month, place of birth and order number; Corsican births (``2A``/``2B``
    in place of the department) are accepted. Raises ``ValueError`` for anything else.
    """
    department = first13[5:7]
    digits = first13[:5] + _CORSICA.get(department, department) + first13[7:]
    if len(first13) != 13 or not digits.isascii() or not digits.isdigit():
        raise ValueError(f"a NIR body is 13 digits (2A/2B allowed), got {first13!r}")
    return f"{97 - int(digits) % 97:02d}"


def luhn_digit(body: str) -> str:
    """The Luhn check digit that completes ``body`` (used by RPPS and FINESS numbers)."""
    if not body.isascii() or not body.isdigit():
        raise ValueError(f"a Luhn body is digits only, got {body!r}")
    total = 0
    # Double every second digit counting from the right end of the body, i.e. from the digit that
    # will sit just left of the check digit.
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)
