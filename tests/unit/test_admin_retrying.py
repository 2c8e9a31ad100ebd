"""hub.kafka.admin.retrying: a starting worker waits out a broker that is away, not a refusal.

The three-broker fault test (tests/integration/test_cluster_faults.py) is where it matters: a node
killed while the worker creates its topics ended the worker with `broker.unavailable` before this.
"""

from __future__ import annotations

import pytest
from kafka.errors import KafkaConnectionError, NodeNotReadyError, TopicAuthorizationFailedError

from hub.errors import BrokerError
from hub.kafka.admin import retrying, transient


def broker_error(cause: Exception) -> BrokerError:
    try:
        raise BrokerError("cannot create topics") from cause
    except BrokerError as exc:
        return exc


def test_connection_errors_are_transient_and_refusals_are_not() -> None:
    assert transient(KafkaConnectionError())
    assert transient(broker_error(NodeNotReadyError()))
    assert not transient(broker_error(TopicAuthorizationFailedError()))
    assert not transient(BrokerError("no cause"))
    assert not transient(ValueError())


def test_a_transient_error_is_retried_until_the_attempt_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    failures = [broker_error(KafkaConnectionError()), KafkaConnectionError()]

    def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "created"

    assert retrying("create topics", attempt, seconds=5.0, pause=0.0) == "created"
    captured = capsys.readouterr()  # once: a second call would find both streams already read
    logged = captured.out + captured.err
    assert logged.count("broker.retrying") == 2 and "KafkaConnectionError" in logged


def test_a_refusal_is_raised_at_once() -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise broker_error(TopicAuthorizationFailedError())

    with pytest.raises(BrokerError):
        retrying("create topics", attempt, seconds=5.0, pause=0.0)
    assert len(calls) == 1


def test_a_broker_still_away_after_the_time_allowed_ends_with_its_error() -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise broker_error(KafkaConnectionError())

    with pytest.raises(BrokerError) as raised:
        retrying("create topics", attempt, seconds=0.05, pause=0.01)
    assert isinstance(raised.value.__cause__, KafkaConnectionError)
    assert 2 <= len(calls) <= 10
