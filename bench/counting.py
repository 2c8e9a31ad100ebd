"""What counting a worker's outputs costs per input: ``python -m bench.counting`` (docs/PERFORMANCE.md).

Every record a stage sends is counted into hub.metrics before it is sealed (hub.streams.counting):
receipts by status, pathway events by kind, share decisions by rule and verdict, alerts. This times
:func:`hub.streams.counting.count_outputs` on the outputs of one demo-like input: its receipt, three
pathway events, each one's AuditEvent deciding six recipients, and two recipient copies of each.
It also times :func:`hub.streams.counting.observe` (``contents=False``, as the agents call it for each
record a stage processed: records, time and outputs by stage). Prints microseconds of CPU, best of
five rounds.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from hub.consent.audit import audit_decisions
from hub.consent.policy import Decision, FinalDecision, Verdict
from hub.records import Outgoing
from hub.streams import counting

RECORDED = datetime(2026, 12, 8, tzinfo=UTC)
RECIPIENTS = [f"recipient-{n}" for n in range(6)]


def _decision(verdict: Verdict, rule: str) -> FinalDecision:
    return FinalDecision(
        verdict, rule, "because", "hub-secret-partage", "1", (Decision(verdict, rule, "because"),)
    )


def one_input() -> list[Outgoing]:
    """The outputs of one input, each with the document it was encoded from (as the stages keep it)."""
    outputs = [Outgoing("hub.receipts.v1", b"source", b"", plain={"status": "accepted", "error": None})]
    for n in range(3):
        event = {"event_id": f"e{n}", "patient_id": "pt-x", "kind": "condition", "source": {"id": "gp"}}
        decisions = [
            (
                recipient,
                _decision("permit", "care_team") if index < 2 else _decision("deny", "deny_by_default"),
            )
            for index, recipient in enumerate(RECIPIENTS)
        ]
        audit = audit_decisions(decisions, event=event, recorded=RECORDED)
        outputs.append(Outgoing("hub.pathway.v1", b"pt-x", b"", plain=event))
        outputs.append(Outgoing("hub.audit-unsealed.v1", b"pt-x", b"", plain=audit))
        outputs += [Outgoing(f"hub.pathway.{r}.v1", b"pt-x", b"", plain=event) for r in RECIPIENTS[:2]]
    return outputs


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.counting", description=__doc__)
    parser.add_argument("--inputs", type=int, default=5000, help="inputs counted in each round")
    args = parser.parse_args()
    outputs = one_input()
    rounds = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(args.inputs):
            counting.count_outputs(outputs)
        rounds.append(time.process_time() - started)
    print(
        f"count_outputs: {1e6 * min(rounds) / args.inputs:.1f} µs of CPU per input ({len(outputs)} outputs)"
    )
    rounds = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(args.inputs):
            counting.observe("identity", outputs, 0.001, contents=False)
        rounds.append(time.process_time() - started)
    print(f"observe:       {1e6 * min(rounds) / args.inputs:.1f} µs of CPU per record a stage processed")


if __name__ == "__main__":
    main()
