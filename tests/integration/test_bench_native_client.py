"""`python -m bench.native_client` on the session's real broker: both clients move every record.

The figures are not asserted (docs/PERFORMANCE.md has them, from a run on a quiet broker); what is
asserted is that each client's run passed all the records through, and that the CPU per record was
measured.
"""

from __future__ import annotations

from bench.native_client import measure, render


def test_both_clients_pass_every_signed_record_through(kafka_bootstrap: str) -> None:
    result = measure(kafka_bootstrap, patients=3, partitions=2, runs=1)
    assert result["records"] > 10
    assert set(result["clients"]) == {"aiokafka", "librdkafka"}
    for row in result["clients"].values():
        assert row["median_records_per_s"] > 0
        assert row["median_cpu_us_per_record"] > 0
    assert "librdkafka median" in render(result)
