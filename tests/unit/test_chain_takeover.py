"""A worker takes over every audit chain it holds at its first AuditEvent, in one read
(hub.audit.stage.ChainWriter._take_over), and keeps another partition's head only when nothing
could have made it stale: no rebalance while it read, no later read of that partition, a verified
tail. The read itself (recover_chains on a real broker): tests/integration/test_audit_chain.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from kafka import TopicPartition

import hub.audit.stage
from hub.audit.chain import ChainHead
from hub.audit.chainkey import ChainKey
from hub.audit.sealer import Takeover
from hub.audit.stage import ChainWriter
from hub.settings import Settings
from hub.topics import TopicNames

TOPICS = TopicNames("")
#: The partitions this worker holds: three chains, and a partition of a topic that is not chained.
HELD = {
    *(TopicPartition(topic, p) for topic in (TOPICS.identity, TOPICS.audit_unsealed) for p in (0, 1, 2)),
    TopicPartition(TOPICS.ingest, 5),
}


def head_at(partition: int) -> ChainHead:
    return ChainHead(10 * partition + 7, f"{partition:064x}")


def found(partition: int, *, break_reason: str | None = None) -> Takeover:
    return Takeover(partition, head_at(partition), break_reason, None, 0, 10 * partition + 7)


class Broker:
    """What recover_chains would read: a head per partition, some tails to break; each read recorded."""

    def __init__(self, breaks: Sequence[int] = (), during_read: Callable[[], None] | None = None) -> None:
        self.reads: list[list[int]] = []
        self.breaks = set(breaks)
        self.during_read = during_read

    def recover_chains(
        self, _bootstrap: str, _topics: TopicNames, partitions: Sequence[int], *_keys: Any
    ) -> dict[int, Takeover]:
        self.reads.append(list(partitions))
        if self.during_read is not None:
            self.during_read()
        return {p: found(p, break_reason="record.forged" if p in self.breaks else None) for p in partitions}


def writer_on(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> tuple[ChainWriter, list[tuple[int, Any]]]:
    monkeypatch.setattr(hub.audit.stage, "recover_chains", broker.recover_chains)
    sent: list[tuple[int, Any]] = []

    async def flush() -> None:
        return None

    app = SimpleNamespace(
        consumer=SimpleNamespace(assignment=lambda: HELD), producer=SimpleNamespace(flush=flush)
    )
    no_topic: Any = None  # the audit topic is replaced below; checkpoints are off (no signing key)
    writer = ChainWriter(
        app,  # type: ignore[arg-type]
        Settings(),
        TOPICS,
        lambda _name: no_topic,
        chain_key=ChainKey(bytes(range(32))),
    )

    async def send(
        *, key: bytes | None, value: bytes, partition: int, **_sealed: Any
    ) -> asyncio.Future[None]:
        sent.append((partition, key))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    writer.audit = SimpleNamespace(send=send)  # type: ignore[assignment]
    return writer, sent


def test_the_first_audit_event_takes_over_every_chain_held_in_one_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = Broker()
    writer, sent = writer_on(broker, monkeypatch)

    async def main() -> None:
        await writer.append(1, b"pt", b"{}")
        await writer.append(0, b"pt", b"{}")
        await writer.append(2, b"pt", b"{}")

    asyncio.run(main())
    assert broker.reads == [[0, 1, 2]], "one read, the unchained partition left out"
    assert [writer.sealer.head(p).seq for p in (0, 1, 2)] == [8, 18, 28], "each goes on from its own head"
    assert sent == [(1, b"pt"), (0, b"pt"), (2, b"pt")]


def test_a_rebalance_while_the_chains_are_read_keeps_only_the_asked_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Partition 2 revoked during the read: the heads read for the others may be another worker's to
    move on now. The asked one is still checked by ``still_current`` before anything is sealed."""
    holder: list[ChainWriter] = []
    broker = Broker(during_read=lambda: holder[0].forget({2}))
    writer, _ = writer_on(broker, monkeypatch)
    holder.append(writer)

    async def main() -> None:
        await writer.append(1, b"pt", b"{}")

    asyncio.run(main())
    assert [writer.sealer.knows(p) for p in (0, 1, 2)] == [False, True, False]

    broker.during_read = None

    async def then() -> None:
        await writer.append(0, b"pt", b"{}")

    asyncio.run(then())
    assert broker.reads == [[0, 1, 2], [0, 2]], "the next first append reads what was not kept"


def test_a_chain_whose_tail_needs_a_break_is_taken_over_by_its_own_first_append(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The segment break is sent under its partition's lock, by the append that takes it over."""
    broker = Broker(breaks=[2])
    writer, sent = writer_on(broker, monkeypatch)

    async def main() -> None:
        await writer.append(0, b"pt", b"{}")
        assert not writer.sealer.knows(2) and writer.sealer.knows(1)
        await writer.append(2, b"pt", b"{}")

    asyncio.run(main())
    assert broker.reads == [[0, 1, 2], [2]]
    assert [partition for partition, _ in sent] == [0, 2, 2], "partition 2: the break, then the record"
    assert sent[1][1] != b"pt"
    assert writer.sealer.head(2).seq == 29


def test_a_chain_taken_over_meanwhile_by_its_own_append_is_not_moved_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two agents' first appends, on two partitions, read at the same time: the one that finishes
    later does not replace a head the other has already sealed onto."""
    broker = Broker()
    writer, _ = writer_on(broker, monkeypatch)

    async def main() -> None:
        started = asyncio.Event()
        release = asyncio.Event()
        original = broker.recover_chains
        calls = 0

        def slow_first(*args: Any) -> dict[int, Takeover]:
            nonlocal calls
            calls += 1
            if calls == 1:
                loop.call_soon_threadsafe(started.set)
                asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return original(*args)

        loop = asyncio.get_running_loop()
        monkeypatch.setattr(hub.audit.stage, "recover_chains", slow_first)
        first = asyncio.create_task(writer.append(0, b"pt", b"{}"))
        await started.wait()
        await writer.append(1, b"pt", b"{}")
        await writer.append(1, b"pt", b"{}")
        release.set()
        await first

    asyncio.run(main())
    assert writer.sealer.head(1).seq == 19, "partition 1 went on from its head, not back to it"
    assert writer.sealer.head(0).seq == 8
