"""Sending a stage's records and knowing they arrived: retry what Kafka may take later, report the rest.

An agent used to hand its records to faust's producer and move on: a record Kafka refused (larger
than the topic accepts, say) was only a warning in the log, or crashed the agent, while the input's
offset was committed all the same, so the input had no outcome. Here an agent waits for every
record's acknowledgement before it takes the next input (faust commits only offsets of inputs taken
past), resends the whole set after a transient error (at-least-once: every record carries a
deterministic id, so a resend is a duplicate consumers drop), and gets back the records refused for
good, to replace them (``IngestRouter.replacing``) or to report them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError

from hub.errors import BatchOutdated
from hub.logging import get_logger
from hub.records import Outgoing

log = get_logger(__name__)

#: ``send(record)`` schedules one record and returns the future of its acknowledgement.
Send = Callable[[Outgoing], Awaitable["asyncio.Future[Any]"]]

#: Backoff between resends after a transient error: doubles from the first to the last, then stays.
FIRST_BACKOFF_SECONDS = 0.5
LAST_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class Refused:
    """A record Kafka will never accept as it is, and why (the error's class name: no content)."""

    record: Outgoing
    error: str


def _kafka_error(exc: BaseException) -> BaseException:
    # faust wraps the client's errors raised at send time; the cause says whether a retry can help.
    if isinstance(exc, ProducerSendError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def is_permanent(exc: BaseException) -> bool:
    """Whether resending the same record cannot succeed (too large, forbidden, corrupt).

    Kafka marks each error retriable or not. A delivery timeout is marked not retriable, yet it
    is what a broker that is down for a while gives: it is resent like any transient error.
    """
    cause = _kafka_error(exc)
    if not isinstance(cause, KafkaError):
        return False
    return not cause.retriable and type(cause).__name__ != "KafkaTimeoutError"


async def _attempt(send: Send, records: Sequence[Outgoing]) -> list[tuple[Outgoing, BaseException]]:
    """Send every record, wait for every acknowledgement; the records that failed, with their error."""
    pending: list[tuple[Outgoing, asyncio.Future[Any]]] = []
    failed: list[tuple[Outgoing, BaseException]] = []
    for record in records:
        try:
            pending.append((record, await send(record)))
        except BatchOutdated:
            raise  # the batch stops here, the records after this one unsent (hub.streams.agents)
        except Exception as exc:  # refused before it left (larger than the producer sends)
            failed.append((record, exc))
    results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
    for (record, _), result in zip(pending, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            failed.append((record, result))
    return failed


async def deliver(send: Send, records: Sequence[Outgoing], *, stage: str) -> list[Refused]:
    """Send ``records`` until each is acknowledged or refused for good; return the refused ones.

    A transient failure resends every record not refused for good, after a growing pause, for as
    long as it takes: the agent holds its partition rather than commit past an input without outcome.
    """
    backoff = FIRST_BACKOFF_SECONDS
    to_send = list(records)
    refused: list[Refused] = []
    while to_send:
        failed = await _attempt(send, to_send)
        if not failed:
            return refused
        transient = [(r, e) for r, e in failed if not is_permanent(e)]
        refused += [Refused(r, type(_kafka_error(e)).__name__) for r, e in failed if is_permanent(e)]
        for record, exc in failed:
            log.warning(
                "stage.send_failed",
                stage=stage,
                topic=record.topic,
                error=type(_kafka_error(exc)).__name__,
                retry=not is_permanent(exc),
            )
        if not transient:
            return refused
        # The whole set again, not only the failed ones: a partial resend could reorder one
        # patient's records on a partition; duplicates are dropped by their ids.
        permanent = {id(r.record) for r in refused}
        to_send = [r for r in to_send if id(r) not in permanent]
        await asyncio.sleep(backoff)
        backoff = min(2 * backoff, LAST_BACKOFF_SECONDS)
    return refused
