"""hub.streams.batches: a batch the agent stopped or failed on is never acknowledged (so never committed).

Run on a real faust agent (its test context: an in-memory channel, no broker), with faust's own
``take_events`` beside it to show the loss this module prevents: faust acknowledges the failed batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust

from hub.streams.agents import records_waiting
from hub.streams.batches import take_batches

Batches = Callable[[Any], AsyncIterator[list[Any]]]


def run_agent(
    batches: Batches,
    values: list[int],
    *,
    failing_on: int,
    until: Callable[[list[list[int]], list[int]], bool],
) -> tuple[list[list[int]], list[int]]:
    """Put ``values`` through an agent that takes ``batches`` of 3 and fails on the batch holding
    ``failing_on``, until ``until(seen, acked)`` holds (10 s at most), then a moment more for any
    late acknowledgement: (the batches it saw, the values acknowledged)."""
    app = faust.App(f"test-batches-{id(batches)}", store="memory://", web_enabled=False)
    seen: list[list[int]] = []
    acked: list[int] = []

    async def process(stream: Any) -> None:
        acknowledge = stream.ack

        async def recording(event: Any) -> bool:
            acked.append(event.value)
            return bool(await acknowledge(event))

        stream.ack = recording
        async for events in batches(stream):
            values = [event.value for event in events]
            seen.append(values)
            if failing_on in values:
                raise RuntimeError("the body fails on this batch")

    agent: Any = app.agent(name="process")(process)

    async def main() -> None:
        async with agent.test_context() as running:
            for value in values:
                await running.put(value)
            deadline = asyncio.get_running_loop().time() + 10.0
            while not until(seen, acked) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)

    asyncio.run(main())
    return seen, acked


#: Batches are cut by size only (six values, batches of three): a window this long never closes first,
#: whatever pauses the machine makes between two puts.
WITHIN = 5.0


def test_a_batch_the_body_failed_on_is_not_acknowledged() -> None:
    seen, acked = run_agent(
        lambda s: take_batches(s, 3, WITHIN),
        [1, 2, 3, 4, 5, 6],
        failing_on=5,
        until=lambda seen, _: len(seen) == 2,
    )
    assert seen == [[1, 2, 3], [4, 5, 6]]
    assert acked == [1, 2, 3], "the batch in progress stays unacknowledged: read again after a restart"


def test_faust_take_events_acknowledges_the_failed_batch_which_is_why_the_hub_does_not_use_it() -> None:
    """If this starts failing, faust fixed its take_events: hub.streams.batches may then go."""
    seen, acked = run_agent(
        lambda s: s.take_events(3, within=WITHIN),
        [1, 2, 3, 4, 5, 6],
        failing_on=5,
        until=lambda _, a: len(a) == 6,
    )
    assert seen == [[1, 2, 3], [4, 5, 6]]
    assert acked == [1, 2, 3, 4, 5, 6]


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds, 10 s at most (the assertions after it say what was missed)."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


def reading(streams: list[Any], value: int) -> bool:
    """Whether the agent's stream is reading ``value`` (its current event), e.g. waiting with it."""
    event = streams[0].current_event if streams else None
    return event is not None and event.value == value


async def second_waits_behind_first(
    running: Any, batches: list[Any], streams: list[Any], first: int, second: int
) -> None:
    """Put ``first`` and wait until its batch is out, then put ``second`` and wait until the stream
    reads it: it waits behind that batch to enter the buffer."""
    await running.put(first)
    await until(lambda: len(batches) == 1)
    await running.put(second)
    await until(lambda: reading(streams, second))


def test_each_value_keeps_its_event_when_the_body_changes_the_current_event_while_it_waits() -> None:
    """The agents set the stream's current event as they route and write a batch, and leave it None
    (hub.streams.agents). A value read while a batch is out waits for it: it must keep its own event
    (read after the wait, it was None: the value was buffered alone and the next batch came empty)."""
    app = faust.App("test-batches-current-event", store="memory://", web_enabled=False)
    batches: list[list[tuple[int, int]]] = []
    streams: list[Any] = []
    proceed = asyncio.Event()

    async def process(stream: Any) -> None:
        streams.append(stream)
        async for events in take_batches(stream, 10, 0.05):
            batches.append([(event.value, event.message.value) for event in events])
            await proceed.wait()
            stream._set_current_event(None)

    agent: Any = app.agent(name="process")(process)

    async def main() -> None:
        async with agent.test_context() as running:
            # The batch [0] is out: 1 is read, and waits with the stream's current event its own.
            await second_waits_behind_first(running, batches, streams, 0, 1)
            proceed.set()
            await until(lambda: len(batches) == 2)

    asyncio.run(main())
    assert batches == [[(0, 0)], [(1, 1)]]


def test_an_idle_stream_sleeps_until_a_value_comes_instead_of_waking_every_window() -> None:
    """With nothing to read, the batch loop waits for the first value, not for the window to pass
    again and again: four agents polling every 2 ms kept an idle worker at ~20 % of a core
    (docs/PERFORMANCE.md, session 7). A value put after the idle spell still makes its batch at once."""
    app = faust.App("test-batches-idle", store="memory://", web_enabled=False)
    batches: list[list[int]] = []
    waits: list[float | None] = []

    async def process(stream: Any) -> None:
        wait_for_stopped = stream.wait_for_stopped

        async def counting(*coros: Any, timeout: float | None = None) -> bool:
            waits.append(timeout)
            return bool(await wait_for_stopped(*coros, timeout=timeout))

        stream.wait_for_stopped = counting
        async for events in take_batches(stream, 10, 0.002):
            batches.append([event.value for event in events])

    agent: Any = app.agent(name="process")(process)

    async def main() -> None:
        async with agent.test_context() as running:
            await asyncio.sleep(0.5)
            idle_waits = len(waits)
            await running.put(7)
            deadline = asyncio.get_running_loop().time() + 10.0
            while not batches and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert idle_waits <= 2, f"{idle_waits} waits in 0.5 s of idleness (every 2 ms: ~250)"

    asyncio.run(main())
    assert batches == [[7]]


def test_a_record_read_before_a_rebalance_and_buffered_after_it_is_left_out_of_its_batch() -> None:
    """A value read while a batch is out waits in the buffer; a rebalance then rewinds the partitions,
    and the records read again come after it. The stale one is left out of the next batch (neither
    processed nor acknowledged, as faust skips stale records), so that batch is the rewound records
    only: marked to be read again for the stale one's sake, the rewound ones would never come again."""
    app = faust.App("test-batches-stale", store="memory://", web_enabled=False)
    batches: list[list[int]] = []
    acked: list[int] = []
    streams: list[Any] = []
    proceed = asyncio.Event()

    async def process(stream: Any) -> None:
        streams.append(stream)
        acknowledge = stream.ack

        async def recording(event: Any) -> bool:
            acked.append(event.value)
            return bool(await acknowledge(event))

        stream.ack = recording
        # The first batch is cut by its window (the reader stays free to read the next value), the
        # second by its size: three values are in the buffer well within the window.
        async for events in take_batches(stream, 3, 2.0):
            batches.append([event.value for event in events])
            await proceed.wait()
            stream._set_current_event(None)

    agent: Any = app.agent(name="process")(process)

    async def main() -> None:
        async with agent.test_context() as running:
            # The batch [1] is out: 2 is read in this generation and waits to enter the buffer.
            await second_waits_behind_first(running, batches, streams, 1, 2)
            app.consumer_generation_id += 1  # a rebalance: 3 and 4 are read in the next generation
            for value in (3, 4):
                await running.put(value, wait=False)
            proceed.set()
            await until(lambda: len(batches) == 2 and 4 in acked)

    asyncio.run(main())
    assert batches == [[1], [3, 4]], "the stale 2 is left out; the batch is the rewound records alone"
    assert acked == [1, 3, 4], "2 is not acknowledged: the rewind reads it again"


def batches_with_backlog(
    behind: Callable[[dict[Any, int]], bool], *, longest: float, second_after: float
) -> tuple[list[list[int]], list[dict[Any, int]]]:
    """Put 1, then 2 ``second_after`` seconds later, through batches of 2 ms windows that stretch up to
    ``longest`` while ``behind`` says records wait: (the batches, the offsets ``behind`` was asked about)."""
    app = faust.App(f"test-batches-backlog-{longest}-{second_after}", store="memory://", web_enabled=False)
    batches: list[list[int]] = []
    asked: list[dict[Any, int]] = []

    def recording(last_offsets: Any) -> bool:
        asked.append(dict(last_offsets))
        return behind(last_offsets)

    async def process(stream: Any) -> None:
        async for events in take_batches(stream, 10, 0.002, longest=longest, behind=recording):
            batches.append([event.value for event in events])

    agent: Any = app.agent(name="process")(process)

    async def main() -> None:
        async with agent.test_context() as running:
            await running.put(1)
            await asyncio.sleep(second_after)
            await running.put(2)
            await until(lambda: sum(map(len, batches)) == 2)

    asyncio.run(main())
    return batches, asked


def test_a_batch_waits_for_the_records_the_consumer_knows_are_behind_it() -> None:
    """Under a backlog the window stretches (2 ms at a time, up to ``longest``): the record that comes
    50 ms later joins the batch. ``longest`` is 5 s, so that no pause of the machine cuts it first."""
    batches, asked = batches_with_backlog(lambda _: True, longest=5.0, second_after=0.05)
    assert batches == [[1, 2]]
    assert len(asked) >= 2, "asked again at each window's end"
    assert all(len(offsets) == 1 for offsets in asked), "the last buffered offset of its one partition"


def test_a_batch_is_cut_after_its_window_when_nothing_waits_behind_it() -> None:
    # 0.5 s apart: the 2 ms window ends long before the second record comes.
    batches, asked = batches_with_backlog(lambda _: False, longest=5.0, second_after=0.5)
    assert batches == [[1], [2]], "a load the worker keeps up with: no wait beyond the window"
    assert len(asked) == 2


def test_a_stretched_window_ends_at_its_longest_though_records_still_wait() -> None:
    """The window timer's check and the sleep's end are ordered by their deadlines: the batch is cut at
    ``longest`` (20 ms), long before the second record comes (2 s), whatever says records wait."""
    batches, _ = batches_with_backlog(lambda _: True, longest=0.02, second_after=2.0)
    assert batches == [[1], [2]]


class Highwaters:
    """A consumer's last known high watermarks (aiokafka's ``highwater``: the next record's offset;
    None before a fetch; an AssertionError for a partition no longer assigned)."""

    def __init__(self, known: dict[str, int | None]) -> None:
        self.known = known

    def highwater(self, tp: str) -> int | None:
        assert tp in self.known, "Partition is not assigned"
        return self.known[tp]


def test_the_records_waiting_behind_a_batch_are_what_its_partitions_hold_past_their_last_offsets() -> None:
    consumer = Highwaters({"p0": 11, "p1": 20, "p2": None})
    assert records_waiting(consumer, {"p0": 10, "p1": 12}) == 7
    assert records_waiting(consumer, {"p0": 10}) == 0, "offset 10 is the last record: highwater 11"
    assert records_waiting(consumer, {"p2": 3}) == 0, "not fetched yet: nothing known"
    assert records_waiting(consumer, {"revoked": 3, "p1": 18}) == 1, "revoked meanwhile: not counted"
