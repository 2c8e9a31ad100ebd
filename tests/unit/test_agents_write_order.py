"""hub.streams.agents: a batch's tables are written only once Kafka has acknowledged its records.

Written before the batch's records were sent, the share stage's tables could reach Kafka and say
"released" while the released copies never did (a worker killed in between); the event read again
found nothing left to send. Here a real faust agent (its test context: an in-memory channel, no
broker) runs :meth:`Agents.add` with a producer whose acknowledgements the test holds back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest

import hub.streams.agents
from hub.audit.chain import ChainHead
from hub.audit.chainkey import ChainKey
from hub.audit.stage import ChainWriter
from hub.crypto.keyring import Keyring
from hub.crypto.keys import LocalKeyProvider
from hub.crypto.store import KeyStore
from hub.records import Outgoing
from hub.settings import Settings
from hub.streams.agents import Agents, StreamCrypto
from hub.streams.batch_writes import BatchWrites
from hub.topics import TopicNames

KEK = bytes(range(32))


class RecordingTable(dict[str, Any]):
    """A plain table that writes its writes in the timeline."""

    def __init__(self, timeline: list[str]) -> None:
        super().__init__()
        self.timeline = timeline

    def __setitem__(self, key: str, value: Any) -> None:
        self.timeline.append(f"written {key}")
        super().__setitem__(key, value)


class HeldProducer:
    """Takes records and acknowledges them only when told to (``release``), as Kafka may take its time."""

    def __init__(self, timeline: list[str]) -> None:
        self.timeline = timeline
        self.futures: list[tuple[str, asyncio.Future[None]]] = []

    async def send(self, out: Outgoing) -> asyncio.Future[None]:
        key = (out.key or b"").decode()
        self.timeline.append(f"sent {key}")
        future = asyncio.get_running_loop().create_future()
        self.futures.append((key, future))
        return future

    def release(self, only: str | None = None) -> None:
        for key, future in self.futures:
            if not future.done() and only in (None, key):
                self.timeline.append(f"acknowledged {key}")
                future.set_result(None)


def held_agents(
    tmp_path: Path, app_id: str, timeline: list[str]
) -> tuple[faust.App, Agents, BatchWrites, HeldProducer]:
    """An app's :class:`Agents` with one table group ``g`` (one table) and a held producer."""
    app = faust.App(app_id, store="memory://", web_enabled=False)
    keyring = Keyring(KeyStore(tmp_path / "keys.sqlite3"), LocalKeyProvider(KEK))
    agents = Agents(app, Settings(), StreamCrypto(keyring, TopicNames(""), []))
    table = BatchWrites(RecordingTable(timeline), name="t")
    agents.groups["g"] = [table]
    producer = HeldProducer(timeline)
    agents.send = producer.send  # type: ignore[method-assign]
    return app, agents, table, producer


def run_agent(
    tmp_path: Path, keys: list[str], *, acknowledge: bool, until: Callable[[list[str]], bool]
) -> list[str]:
    """Put ``keys`` through an agent that writes each in a table and sends one record for it; the
    producer acknowledges (or never does), the agent is stopped once ``until(timeline)`` holds."""
    timeline: list[str] = []
    app, agents, table, producer = held_agents(tmp_path, f"test-agents-write-order-{acknowledge}", timeline)

    def route(message: Any) -> list[Outgoing]:
        key = message.value.decode()
        table[key] = {"seen": True}
        return [Outgoing("out", key.encode(), b"{}")]

    agents.add("stage", app.channel(), route, encrypted=False, writes="g")  # type: ignore[arg-type]
    agent = app.agents["stage"]

    async def main() -> None:
        async with agent.test_context() as running:
            for key in keys:
                await running.put(key.encode())
            deadline = asyncio.get_running_loop().time() + 10.0
            while not until(timeline) and asyncio.get_running_loop().time() < deadline:
                if acknowledge and producer.futures:
                    await asyncio.sleep(0.05)
                    producer.release()
                await asyncio.sleep(0.02)
        # Leaving the context stops the agent: a batch still being sent is abandoned (a kill).

    asyncio.run(main())
    return timeline


def test_a_batch_is_written_after_its_records_are_acknowledged(tmp_path: Path) -> None:
    timeline = run_agent(
        tmp_path, ["a", "b"], acknowledge=True, until=lambda t: sum(e.startswith("written") for e in t) == 2
    )
    for key in ("a", "b"):
        assert timeline.index(f"acknowledged {key}") < timeline.index(f"written {key}"), timeline


def test_a_batch_stopped_while_its_records_are_sent_writes_nothing(tmp_path: Path) -> None:
    timeline = run_agent(
        tmp_path, ["a", "b"], acknowledge=False, until=lambda t: sum(e.startswith("sent") for e in t) == 2
    )
    assert timeline == ["sent a", "sent b"], "killed before Kafka took them: the tables say nothing"


async def wait_until(condition: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + 10.0
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


def share_and_merge(
    tmp_path: Path, app_id: str, timeline: list[str]
) -> tuple[faust.App, Agents, BatchWrites, HeldProducer, list[Any]]:
    """Two agents writing one table group, as share and share-merge do: share writes ``pt-x``;
    share-merge reads it (recorded in the returned list), then writes it."""
    app, agents, table, producer = held_agents(tmp_path, app_id, timeline)
    read: list[Any] = []

    def first(message: Any) -> list[Outgoing]:
        table["pt-x"] = {"by": "share"}
        return [Outgoing("out", b"share", b"{}")]

    def second(message: Any) -> list[Outgoing]:
        read.append(table.get("pt-x"))
        table["pt-x"] = {"by": "share-merge"}
        return [Outgoing("out", b"merge", b"{}")]

    agents.add("share", app.channel(), first, encrypted=False, writes="g")  # type: ignore[arg-type]
    agents.add("share-merge", app.channel(), second, encrypted=False, writes="g")  # type: ignore[arg-type]
    return app, agents, table, producer, read


@contextlib.asynccontextmanager
async def both_sent(
    app: faust.App, timeline: list[str], *, between: Callable[[], None] = lambda: None
) -> AsyncIterator[None]:
    """share and share-merge running, each with a batch sent and not yet acknowledged: share's first,
    then (after ``between``) share-merge's, which read share's pending write."""
    async with (
        app.agents["share"].test_context() as share,
        app.agents["share-merge"].test_context() as merge,
    ):
        await share.put(b"1")
        await wait_until(lambda: "sent share" in timeline)
        between()
        await merge.put(b"2")
        await wait_until(lambda: "sent merge" in timeline)
        yield


def test_an_agent_writes_after_the_batch_of_the_other_it_read(tmp_path: Path) -> None:
    """share and share-merge write the same tables: share-merge, whose batch began while share's was
    still being sent, reads share's pending write and writes its own only after share's is written,
    even though Kafka acknowledged share-merge's records first."""
    timeline: list[str] = []
    app, _, table, producer, read = share_and_merge(tmp_path, "test-agents-write-order-two", timeline)

    async def main() -> None:
        async with both_sent(app, timeline):
            producer.release("merge")
            await asyncio.sleep(0.2)
            assert not [e for e in timeline if e.startswith("written")], "share-merge waits for share"
            producer.release("share")
            await wait_until(lambda: sum(e.startswith("written") for e in timeline) == 2)

    asyncio.run(main())
    assert read == [{"by": "share"}], "share's pending write was read"
    assert [e for e in timeline if e.startswith("written")] == ["written pt-x", "written pt-x"]
    assert table.table["pt-x"] == {"by": "share-merge"}, "the later batch's value is the one kept"


def test_a_batch_sent_while_a_rebalance_reassigned_its_partitions_writes_nothing_and_is_read_again(
    tmp_path: Path,
) -> None:
    """The partitions of a batch in flight may go to another worker, which rebuilds their tables from
    the changelogs without this batch's writes: written after that, they would land among the new
    owner's (two writers of one table; tests/integration/test_convergence.py lost late releases that
    way). The batch waits for the rebalance to end, writes nothing, and stays unacknowledged: the
    rewind that ends the rebalance reads it again."""
    timeline: list[str] = []
    app, agents, table, producer = held_agents(tmp_path, "test-agents-write-order-rebalance", timeline)
    routed: list[Any] = []

    def route(message: Any) -> list[Outgoing]:
        routed.append(message)
        table["pt-x"] = {"decided": message.value.decode()}
        return [Outgoing("out", b"pt-x", b"{}")]

    agents.add("share", app.channel(), route, encrypted=False, writes="g")  # type: ignore[arg-type]

    async def main() -> None:
        async with app.agents["share"].test_context() as share:
            await share.put(b"before")
            await wait_until(lambda: "sent pt-x" in timeline)
            # A rebalance begins while the batch's records are out: faust raises app.rebalancing as
            # the partitions are revoked, and the new assignment has the next generation.
            app.rebalancing = True
            app.consumer_generation_id += 1
            producer.release()
            await asyncio.sleep(0.3)
            assert timeline == ["sent pt-x", "acknowledged pt-x"], "nothing is written during it"
            app.rebalancing = False
            await wait_until(lambda: table.pending == 0 and not agents.unwritten["g"])
            # Read again after the rewind (in this test, put again): decided now, and written.
            await share.put(b"after")
            await wait_until(lambda: timeline.count("sent pt-x") == 2)
            producer.release()
            await wait_until(lambda: any(e.startswith("written") for e in timeline))

    asyncio.run(main())
    assert [e for e in timeline if e.startswith("written")] == ["written pt-x"]
    assert table.table["pt-x"] == {"decided": "after"}, "the batch sent across the rebalance wrote nothing"
    assert [m.acked for m in routed] == [False, True], "the first batch is left to be read again"


def test_a_batch_read_since_the_rebalance_is_written_even_after_one_read_again(tmp_path: Path) -> None:
    """share-merge's batch was read after the rebalance (its generation is the current one): nothing
    would read it again, so it is written, though share's batch, read before and still out, is read
    again. Left unwritten, its records' commits would be held for good (a convergence run stalled
    that way). What it took from share's pending write is decided again, to the same effect, when
    share's records come again."""
    timeline: list[str] = []
    app, agents, table, producer, read = share_and_merge(tmp_path, "test-agents-write-order-since", timeline)

    def rebalance() -> None:
        app.consumer_generation_id += 1  # a rebalance came and went while share's batch was out

    async def main() -> None:
        async with both_sent(app, timeline, between=rebalance):
            producer.release()
            await wait_until(lambda: not agents.unwritten["g"])
            await asyncio.sleep(0.1)

    asyncio.run(main())
    assert read == [{"by": "share"}], "share-merge read share's pending write"
    assert [e for e in timeline if e.startswith("written")] == ["written pt-x"], timeline
    assert table.table["pt-x"] == {"by": "share-merge"}


def revoking_chain(app: faust.App, timeline: list[str]) -> ChainWriter:
    """The audit chain's real writer (hub.audit.stage.ChainWriter), on a producer that records each
    AuditEvent chained: while the first one is sent, a rebalance reassigns the partitions."""
    writer = ChainWriter(app, Settings(), TopicNames(""), app.topic, chain_key=ChainKey(bytes(range(32))))

    async def take_over(partition: int) -> None:
        # What recover_chain reads from the log of a partition chained by no one yet.
        timeline.append("head read")
        writer.sealer.start(partition, ChainHead.genesis(), now=0.0)

    async def send(*, key: bytes | None, value: bytes, **_sealed: Any) -> asyncio.Future[None]:
        timeline.append(f"chained {value.decode()}")
        # A rebalance ran meanwhile: the next assignment is the next generation.
        app.consumer_generation_id += 1
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    writer._take_over = take_over  # type: ignore[method-assign]
    writer.audit = SimpleNamespace(send=send)  # type: ignore[assignment]
    return writer


def test_a_batch_stops_chaining_once_its_partitions_are_revoked_and_sends_no_copy_without_its_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker may chain the partition now: an AuditEvent chained here would fork the chain.
    The batch stops at its next AuditEvent, and the copy that comes after it is never sent: no copy
    leaves without its decision on record. The whole batch is read again (nothing written, nothing
    acknowledged)."""
    # One batch of both events, cut by its size, whatever pause the machine makes between the puts.
    monkeypatch.setattr(hub.streams.agents, "BATCH_MAX", 2)
    monkeypatch.setattr(hub.streams.agents, "BATCH_WITHIN_SECONDS", 5.0)
    timeline: list[str] = []
    app, agents, table, _ = held_agents(tmp_path, "test-agents-write-order-chain", timeline)
    agents.chain = chain = revoking_chain(app, timeline)
    audit_topic = agents.crypto.topics.audit_unsealed
    routed: list[Any] = []

    def route(message: Any) -> list[Outgoing]:
        routed.append(message)
        event = message.value.decode()
        table[f"pt-{event}"] = {"decided": event}
        return [
            Outgoing(audit_topic, b"pt", f"audit {event}".encode()),
            Outgoing("out", event.encode(), b"{}"),
        ]

    # The agent that decides each pathway event as identity publishes it (hub.streams.routing).
    agents.add("identity", app.channel(), route, encrypted=False, writes="g")  # type: ignore[arg-type]

    async def main() -> None:
        async with app.agents["identity"].test_context() as deciding:
            # Two events in one batch: both are routed before the batch is sent.
            await deciding.put(b"1")
            await deciding.put(b"2")
            await wait_until(lambda: len(routed) == 2 and not agents.unwritten["g"])

    asyncio.run(main())
    assert timeline == ["head read", "chained audit 1", "sent 1"], "audit 2 not chained, so copy 2 not sent"
    assert not table.table and table.pending == 0
    assert [m.acked for m in routed] == [False, False]
    assert not chain.sealer.knows(0), "the head held here may be behind the new owner's: read again"


def test_the_sealing_agent_stops_chaining_once_its_partitions_are_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other stages' AuditEvents (hub.audit-unsealed.v1) are chained by the sealing agent: one whose
    partition a rebalance reassigned while it waited is not chained (the new owner chains it), and its
    batch is left unacknowledged, to be read again by the partition's owner."""
    monkeypatch.setattr(hub.streams.agents, "BATCH_MAX", 2)
    monkeypatch.setattr(hub.streams.agents, "BATCH_WITHIN_SECONDS", 5.0)
    timeline: list[str] = []
    app, agents, _, _ = held_agents(tmp_path, "test-agents-write-order-seal", timeline)
    chain = revoking_chain(app, timeline)
    agents.add_sealing(app.channel(), chain)  # type: ignore[arg-type]
    assert agents.chain is chain, "the share agents chain with the same writer"
    taken: list[Any] = []

    async def main() -> None:
        async with app.agents["audit-seal"].test_context() as seal:
            for value in (b"reject 1", b"reject 2"):
                taken.append(await seal.put(value, partition=0))
            await wait_until(lambda: bool(timeline) and not chain._locks[0].locked())
            await asyncio.sleep(0.05)

    asyncio.run(main())
    assert timeline == ["head read", "chained reject 1"], "reject 2 was chained on a partition not ours"
    assert [event.message.acked for event in taken] == [False, False]
    assert not chain.sealer.knows(0)
