"""`python -m bench.audit_takeover` on the session's real broker: both ways of taking the chains over
find every chain intact at its last record (the run fails otherwise), and the figures are printed.
The figures themselves are not asserted (docs/PERFORMANCE.md has them, from a run on a quiet broker)."""

from __future__ import annotations

import pytest

from bench.audit_takeover import main


def test_each_partition_alone_and_all_in_one_read_find_every_chain(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--bootstrap", kafka_bootstrap, "--partitions", "3", "--checkpointed", "4", "--records", "6"])
    printed = capsys.readouterr().out
    assert "3 partitions of 10 records (6 after the last checkpoint)" in printed
    assert "all in one read" in printed and "reading 30 records back" in printed
