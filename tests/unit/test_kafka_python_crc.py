"""kafka-python, which the audit take-over, ``hub audit verify``, the console and the CLI read with,
checks every fetched batch's CRC-32C; without the ``crc32c`` package it does so in pure Python, six
times slower to read audit records (docs/PERFORMANCE.md, session 17)."""

from __future__ import annotations

import kafka.record.util


def test_kafka_python_checks_crcs_in_c_and_gets_the_standard_value() -> None:
    assert kafka.record.util.crc32c_c is not None, "the crc32c package is not installed (pyproject.toml)"
    # RFC 3720 (iSCSI), appendix B.4: the CRC-32C check value of "123456789".
    assert kafka.record.util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283
