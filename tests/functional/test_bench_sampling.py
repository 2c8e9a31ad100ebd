"""`hub bench --sample`'s reading of py-spy's collapsed stacks (bench/sampling.py).

The stacks below are shaped as py-spy 0.4 writes them (`--format raw`), trimmed: a worker's event loop
thread, faust's consumer thread and the metrics server's thread.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.sampling import (
    OTHER,
    STAGE_FRAMES,
    WORKER_ENTRY,
    Sampler,
    SamplerError,
    collapsed_stacks,
    render,
    stage_of,
    summarise,
)

LOOP = (
    "_run_module_as_main (<frozen runpy>:198);worker (hub/cli.py:120);run_worker (hub/streams/worker.py:97);"
    "BaseEventLoop._run_once (asyncio/base_events.py:1922);Handle._run (asyncio/events.py:80)"
)
AGENT = LOOP + ";Agents.add.<locals>.process (hub/streams/agents.py:472)"
IDENTITY = (
    AGENT + ";route_batch (hub/streams/agents.py:259);IdentityRouter.route (hub/streams/routing.py:251)"
)
SHARE = (
    IDENTITY
    + ";IdentityRouter._decided (hub/streams/routing.py:302);ShareRouter.route (hub/streams/routing.py:336)"
)
CONSUMER_THREAD = (
    # (run_worker on a thread's stack, as if it had started the thread: still not the event loop's)
    "Thread._bootstrap (threading.py:1002);Thread._bootstrap_inner (threading.py:1045);"
    "WorkerThread.run (mode/threads.py:66);run_worker (hub/streams/worker.py:97)"
)

STACKS = [
    # ingest: the FHIR decode counts apart from the rest of the ingest stage
    AGENT + ";IngestRouter.route (hub/streams/routing.py:141);process_ingest (hub/ingest/pipeline.py:250);"
    "decode (hub/ingest/decode.py:434);BaseModel.__init__ (pydantic/main.py:280) 30",
    AGENT + ";IngestRouter.route (hub/streams/routing.py:141);encode_json (hub/records.py:161) 10",
    # the share stage inside identity, the alerts inside the share stage: the innermost counts
    SHARE + ";ShareStage.handle (hub/consent/share.py:100) 20",
    SHARE + ";ShareRouter._with_alerts (hub/streams/routing.py:366);"
    "AlertRouter.route (hub/streams/routing.py:393) 5",
    IDENTITY + ";IdentityStage.handle (hub/identity/stage.py:172) 5",
    # sending, in an agent, counts for the agent's sending even where aiokafka does the work
    AGENT + ";Agents.deliver_batch (hub/streams/agents.py:345);BatchBuilder.append "
    "(aiokafka/producer/message_accumulator.py:77) 10",
    # the agent's own loop, then outside any agent: aiokafka's sender, the event loop
    AGENT + ";BatchWrites.get (hub/streams/batch_writes.py:95) 5",
    LOOP + ";Sender._sender_routine (aiokafka/producer/sender.py:147) 10",
    LOOP + ";BaseEventLoop.call_soon (asyncio/base_events.py:751) 5",
    # idle: the event loop waiting in its selector is not CPU
    LOOP.rsplit(";", 1)[0] + ";EpollSelector.select (selectors.py:468) 400",
    # other threads: faust's consumer thread at work, then waiting
    CONSUMER_THREAD + ";PartitionRecords._unpack_records (aiokafka/consumer/fetcher.py:300) 3",
    CONSUMER_THREAD + ";EpollSelector.select (selectors.py:468) 900",
    "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982);"
    "BaseServer.serve_forever (socketserver.py:233);_PollLikeSelector.select (selectors.py:415) 500",
    "",
]


def test_busy_samples_of_the_event_loop_count_for_the_innermost_stage() -> None:
    summary = summarise(STACKS, cpu_ms_per_input=5.0)
    by_stage = {row["stage"]: row for row in summary["stages"]}
    assert summary["busy_samples"] == 100
    assert summary["idle_samples"] == 400
    assert summary["other_threads_busy_samples"] == 3
    assert by_stage["ingest: FHIR parse, validation, conversion"]["samples"] == 30
    assert by_stage["ingest: the rest (signature, normalise, events)"]["samples"] == 10
    assert by_stage["share decisions and their audit"]["samples"] == 20
    assert by_stage["eligibility and alerts"]["samples"] == 5
    assert by_stage["identity"]["samples"] == 5
    assert by_stage["sealing and sending a batch's records"]["samples"] == 10
    assert by_stage["the agents' loop (batches, opening, counting)"]["samples"] == 5
    assert by_stage["Kafka client (produce requests, fetches)"]["samples"] == 10
    assert by_stage[OTHER]["samples"] == 5
    assert sum(row["samples"] for row in summary["stages"]) == summary["busy_samples"]
    # A share of the busy samples times the worker's CPU per input: milliseconds per input.
    assert by_stage["ingest: FHIR parse, validation, conversion"]["share"] == pytest.approx(0.30)
    assert by_stage["ingest: FHIR parse, validation, conversion"]["ms_per_input"] == pytest.approx(1.5)
    assert summary["top_own"][0] == {
        "function": "BaseModel.__init__ (pydantic/main.py)",
        "samples": 30,
        "share": 0.3,
    }


def test_without_the_phase_cpu_there_are_shares_and_no_milliseconds() -> None:
    summary = summarise(STACKS)
    assert all(row["ms_per_input"] is None for row in summary["stages"])
    text = render(summary, "samples.txt")
    assert "100 busy samples of its event loop, 3 of its other threads" in text
    assert " 30.0%         -  ingest: FHIR parse, validation, conversion" in text


def test_an_agent_named_like_a_stage_elsewhere_does_not_count_for_it() -> None:
    # Only the hub's own functions, in their own files, name a stage.
    assert stage_of([LOOP, "decode (json/decoder.py:337)"]) == OTHER
    assert stage_of([LOOP, "Worker.process (faust/worker.py:10)"]) == "faust and mode"
    empty = summarise([])
    assert empty["busy_samples"] == 0
    assert all(row["share"] == 0.0 for row in empty["stages"])


def test_a_sampler_that_wrote_nothing_says_why(tmp_path: Path) -> None:
    log = tmp_path / "py-spy.log"
    sampler = Sampler.attach(2**22 + 1, tmp_path / "samples.txt", log)  # no such process
    with pytest.raises(SamplerError, match="py-spy wrote no samples"):
        sampler.stop(timeout=30)


def test_the_sampler_reads_a_running_python_process(tmp_path: Path) -> None:
    """py-spy itself, attached to a real process: what it writes is what :func:`summarise` reads."""
    script = tmp_path / "busy.py"
    script.write_text(
        "import time\n"
        "def spinning_here():\n"
        "    end = time.monotonic() + 60\n"
        "    while time.monotonic() < end:\n"
        "        sum(range(1000))\n"
        "spinning_here()\n"
    )
    busy = subprocess.Popen([sys.executable, str(script)])
    try:
        sampler = Sampler.attach(busy.pid, tmp_path / "samples.txt", tmp_path / "py-spy.log")
        time.sleep(1.5)
        try:
            written = sampler.stop()
        except SamplerError as refused:
            # A container without CAP_SYS_PTRACE (or ptrace_scope 3) refuses any attach: the
            # environment's limit, not the sampler's; `hub bench --sample` says so the same way.
            if "ermission denied" in str(refused) or "ot permitted" in str(refused):
                pytest.skip(f"this machine refuses ptrace: {refused}")
            raise
    finally:
        busy.kill()
        busy.wait()
    stacks = list(collapsed_stacks(written.read_text().splitlines()))
    assert sum(count for _, count in stacks) > 0
    assert any(frame.startswith("spinning_here (") for frames, _ in stacks for frame in frames)


def test_every_frame_the_summary_looks_for_names_a_function_of_the_hub() -> None:
    """A stage renamed or moved in the hub must not leave its samples silently under "the rest"."""
    names = {WORKER_ENTRY.split(" (")[0]: WORKER_ENTRY.split(" (")[1]}
    for _, function, file in STAGE_FRAMES:
        names[function] = file
    for function, file in names.items():
        module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
        outer, _, inner = function.partition(".<locals>.")
        target: Any = module
        for part in outer.split("."):
            target = getattr(target, part)
        assert callable(target), function
        if inner:  # a function defined inside another (Agents.add's process): its code is there
            assert inner in {c.co_name for c in target.__code__.co_consts if hasattr(c, "co_name")}, function
