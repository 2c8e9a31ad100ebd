"""Batches of a faust stream whose events are acknowledged only once their batch was processed.

faust's ``Stream.take_events`` acknowledges a batch's events in a ``finally`` around its ``yield``: when
the agent is stopped (SIGTERM, a rolling restart) or fails while it still works on a batch, faust
closes the generator, the ``finally`` acknowledges the whole batch, and the consumer commits offsets
past records whose outputs were never sent. Those inputs were lost without a trace: no receipt, no
event (found by ``hub bench --state-patients``, which stops a worker with SIGTERM under load).

:func:`take_batches` is faust's algorithm with two changes. A batch is acknowledged only when the
agent asks for the next one, that is, once its body has finished with it: a batch abandoned by a stop
or an exception stays unacknowledged, its offsets are not committed, and the records are read again by
the next owner of the partition (at-least-once, deterministic ids: DESIGN.md 4). And a batch's window
is a timer its first event starts, instead of a wait that times out over and over while idle.

A window can stretch while records are known to wait behind it (``longest``, ``behind``): when the
consumer's fetches say a buffered partition holds later records, the batch waits for them, a window
at a time, until it is full or ``longest`` has passed since its first event. Under a backlog the
batches fill (fewer table writes, changelog records and acknowledgement rounds per input); at a load
the worker keeps up with, nothing waits behind the batch and it is cut after ``within`` as before.

A batch the caller cannot stand behind (its partitions were reassigned while it was processed:
hub.streams.agents) is marked :attr:`Batch.read_again`: it is not acknowledged either, and the rewind
that follows every rebalance (hub.streams.transport) reads it again.

A record that went stale in the buffer is left out of its batch, neither processed nor acknowledged:
faust skips a record of an older consumer generation when its stream reads it, but one read before a
rebalance can wait in this buffer (behind the batch being processed) until after the rebalance's
rewind, and then share a batch with the records that rewind read again. The whole batch was then read
again for the stale one's sake, and the rewound records with it, which nothing would ever read again:
their partition's commits were held for good (``consumer.commit_held``, found by
tests/integration/test_convergence.py on two test processes). Dropped here as faust drops it, the stale
record comes again with the rewound ones.

It relies on faust's stream internals as ``take_events`` does (``add_processor``, ``_enable_passive``,
``current_event``), checked against the pinned faust-streaming version by tests/unit/test_batches.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from mode.utils.futures import notify


class Batch(list[Any]):
    """One batch's events; set :attr:`read_again` to leave them unacknowledged though processed."""

    read_again: bool = False


#: Whether the consumer knows of records after these offsets (the last buffered, per partition).
RecordsBehind = Callable[[Mapping[Any, int]], bool]


async def take_batches(  # noqa: PLR0915 - faust's take_events, kept whole to compare line by line
    stream: Any,
    max_records: int,
    within: float,
    *,
    longest: float = 0.0,
    behind: RecordsBehind | None = None,
) -> AsyncIterator[Batch]:
    """The stream's events, up to ``max_records`` at a time or what came within ``within`` seconds of
    the batch's first event; while ``behind`` says more records wait on the buffered partitions, the
    window is stretched by ``within`` at a time, up to ``longest`` after the first event.

    Each batch's events are acknowledged after the caller has processed it (when it asks for the next
    batch), never when the caller stops or fails on it, nor when it marked the batch ``read_again``.
    """
    buffer: list[Any] = []
    events: list[Any] = []
    # Set when the batch is full, or by the timer its first value starts (``within``): the loop makes
    # one wait per batch and none while idle. (Waiting on a timeout instead woke an idle agent every
    # ``within``: a wait of mode's costs three tasks, and four agents polling every 2 ms kept an idle
    # worker at 20-23 % of a core, against 7-8 % now: docs/PERFORMANCE.md, session 7.)
    buffer_full = asyncio.Event()
    window: asyncio.TimerHandle | None = None
    buffer_consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    enable_acks: bool = stream.enable_acks
    # The last buffered offset of each partition, and when the batch's first event came.
    last_offsets: dict[Any, int] = {}
    first_at = 0.0

    def window_ended() -> None:
        nonlocal window
        if behind is not None and stream.loop.time() + within - first_at <= longest and behind(last_offsets):
            window = stream.loop.call_later(within, window_ended)
        else:
            buffer_full.set()

    async def add_to_buffer(value: Any) -> Any:
        # Called by faust for each event the stream reads in the background (a stream processor).
        nonlocal consuming, window, first_at
        # The value's event, read before waiting: meanwhile the agent sets the stream's current event
        # as it routes and writes (hub.streams.agents), and leaves it None (faust's take_events reads
        # it after the wait: a value was buffered without its event, and the next batch came empty).
        event = stream.current_event
        if event is None:
            raise RuntimeError("the batch buffer found no current event")
        if consuming is not None:
            try:
                await consuming
            finally:
                consuming = None
        buffer.append(value)
        events.append(event)
        last_offsets[event.message.tp] = event.message.offset
        if len(buffer) == 1:
            first_at = stream.loop.time()
            window = stream.loop.call_later(within, window_ended)
        if len(buffer) >= max_records:
            buffer_full.set()
            # Not one record more than max_records in a batch: wait until this one is taken.
            buffer_consumed.clear()
            await stream.wait(buffer_consumed)
        return value

    # This generator acknowledges events itself, once their batch is done.
    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter_of(stream.channel))
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(buffer_full)
            if not buffer:
                continue  # stopped while idle
            # The background reader must not add to the buffer while the batch is out.
            consuming = stream.loop.create_future()
            batch = Batch(read_in(events, stream.app.consumer_generation_id))
            processed = False
            try:
                if batch:
                    yield batch
                processed = True
            finally:
                # Else the caller stopped or failed on the batch: its events stay unacknowledged, so
                # their offsets are never committed and the records are read again.
                acknowledged = batch if processed and not batch.read_again else []
                buffer.clear()
                events.clear()
                last_offsets.clear()
                if window is not None:
                    window.cancel()  # the batch was full first: its timer must not cut the next one
                    window = None
                notify(consuming)
                buffer_full.clear()
                buffer_consumed.set()
            for event in acknowledged:
                await stream.ack(event)
    finally:
        if window is not None:
            window.cancel()
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)


def read_in(events: Iterable[Any], generation: int) -> list[Any]:
    """The events read in the consumer group's current ``generation`` (faust stamps each record)."""
    return [event for event in events if event.message.generation_id == generation]


def aiter_of(channel: Any) -> Any:
    """``aiter`` of a faust channel (mode's helper, as faust's own take_events uses)."""
    from mode.utils.aiter import aiter  # noqa: PLC0415 - mode's, kept beside its one use

    return aiter(channel)
