"""Where a worker's CPU goes, by stage, from a sampling profiler attached from outside.

``hub bench --profile`` runs the worker under cProfile, which doubles its cost and inflates whatever
makes many small calls (the event loop, aiokafka): its proportions are skewed. ``hub bench --sample``
instead attaches py-spy (``py-spy record --format raw --nonblocking``) to the single worker for the
throughput phase; py-spy reads the process's stacks 100 times a second from another process, without
pausing it. It is not free on a small machine (it shares the cores with the worker and the broker:
102 and 118 inputs/s at 100 and 50 samples a second against 138 without it, one run each on 2 cores),
so the shares are those of a slowed run. :func:`summarise` reads the collapsed stacks and says which
share of the event loop thread's busy samples each stage took; multiplied by the same run's worker
CPU per input, that is milliseconds of CPU per input by stage (the figure issue 13's target is
written in).

Only the event-loop thread is counted: faust's consumer thread, the metrics server and the broker
watch spend their time waiting; a stack whose innermost frame is a selector's ``select`` or a
condition's ``wait`` is idle, whatever thread it is on.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.errors import ErrorCode, HubError

#: Samples per second: enough for a few thousand samples in the throughput phase.
SAMPLE_RATE = 100
#: The event loop thread's stacks all pass through the worker's entry point.
WORKER_ENTRY = "run_worker (hub/streams/worker.py"
#: Frames that only other threads run.
THREAD_FRAMES = ("Thread.run (", "Thread._bootstrap (", "WorkerThread.run (")
#: An innermost frame naming one of these is waiting, not working.
IDLE_LEAVES = ("select (selectors.py", "Condition.wait (threading.py", "Event.wait (threading.py")

#: The stages, innermost first: a sample counts for the innermost of these functions on its stack
#: (the share stage runs inside identity, the alerts inside the share stage; decode inside ingest).
#: Each is (stage, qualified name or its last part, file).
STAGE_FRAMES: tuple[tuple[str, str, str], ...] = (
    ("ingest: FHIR parse, validation, conversion", "decode", "hub/ingest/decode.py"),
    ("ingest: the rest (signature, normalise, events)", "IngestRouter.route", "hub/streams/routing.py"),
    ("eligibility and alerts", "AlertRouter.route", "hub/streams/routing.py"),
    ("share decisions and their audit", "ShareRouter.route", "hub/streams/routing.py"),
    ("identity", "IdentityRouter.route", "hub/streams/routing.py"),
    ("sealing and sending a batch's records", "Agents.deliver_batch", "hub/streams/agents.py"),
    ("table writes after the acknowledgements", "write_tables", "hub/streams/agents.py"),
    ("the agents' loop (batches, opening, counting)", "Agents.add.<locals>.process", "hub/streams/agents.py"),
)
#: Outside an agent, by the innermost frame's package.
RUNTIME_PACKAGES: tuple[tuple[str, str], ...] = (
    ("Kafka client (produce requests, fetches)", "aiokafka/"),
    ("faust and mode", "faust/"),
    ("faust and mode", "mode/"),
)
OTHER = "event loop and the rest"


class SamplerError(HubError):
    """py-spy is missing or could not attach to the worker."""

    code = ErrorCode.INTERNAL  # as the benchmark's other failures (bench.run.BenchFailed)


@dataclass
class Sampler:
    """A ``py-spy record`` process attached to one worker until :meth:`stop`."""

    process: subprocess.Popen[bytes]
    output: Path
    log: Path

    @classmethod
    def attach(cls, pid: int, output: Path, log: Path) -> Sampler:
        executable = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(executable).exists():
            raise SamplerError("py-spy is not installed", hint="`make install` installs it (the dev extra)")
        with log.open("wb") as log_file:
            process = subprocess.Popen(  # noqa: S603 - fixed arguments, the benchmark's own worker
                [
                    executable,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(SAMPLE_RATE),
                    "--format",
                    "raw",
                    "--output",
                    str(output),
                    # Read while the worker runs: pausing it for each sample (py-spy's default) cost
                    # more (70 inputs/s in one run at 200 samples a second).
                    "--nonblocking",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return cls(process, output, log)

    def stop(self, timeout: float = 30.0) -> Path:
        """Stop sampling (py-spy writes its file on SIGINT) and return the file."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if not self.output.exists():
            # Typically ptrace refused (kernel.yama.ptrace_scope): py-spy's own words say so.
            reason = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise SamplerError(
                "py-spy wrote no samples: " + " / ".join(reason),
                hint="py-spy attaches with ptrace: run as the worker's user with "
                "kernel.yama.ptrace_scope 0 or 1, or as root",
            )
        return self.output


def collapsed_stacks(lines: Iterable[str]) -> Iterable[tuple[list[str], int]]:
    """``frame;frame;... count`` lines (py-spy's raw format) as (frames, outermost first; count)."""
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def _function_and_file(frame: str) -> tuple[str, str]:
    """``Class.func (path/file.py:123)`` as (``Class.func``, ``path/file.py``)."""
    name, _, rest = frame.partition(" (")
    return name, rest.rsplit(":", 1)[0] if ":" in rest else rest.rstrip(")")


def _frame_name(frame: str) -> str:
    """``func (file:line)`` without its line: one name for every line of a function."""
    name, file = _function_and_file(frame)
    return f"{name} ({file})" if file else name


def stage_of(frames: Sequence[str]) -> str:
    """The stage a busy event-loop sample counts for (see :data:`STAGE_FRAMES`)."""
    for frame in reversed(frames):
        name, file = _function_and_file(frame)
        for stage, function, in_file in STAGE_FRAMES:
            if file == in_file and (name == function or name.endswith("." + function)):
                return stage
    _, leaf_file = _function_and_file(frames[-1]) if frames else ("", "")
    for stage, package in RUNTIME_PACKAGES:
        if leaf_file.startswith(package):
            return stage
    return OTHER


def _is_event_loop_thread(frames: Sequence[str]) -> bool:
    return any(WORKER_ENTRY in f for f in frames) and not any(
        f.startswith(thread) for f in frames for thread in THREAD_FRAMES
    )


def summarise(
    lines: Iterable[str], *, cpu_ms_per_input: float | None = None, top: int = 15
) -> dict[str, Any]:
    """Shares of the event loop thread's busy samples by stage, and its busiest functions.

    ``cpu_ms_per_input`` (the phase's worker CPU per input) turns each share into milliseconds.
    """
    by_stage: Counter[str] = Counter()
    own: Counter[str] = Counter()
    idle = other_threads_busy = 0
    for frames, count in collapsed_stacks(lines):
        waiting = any(idle_leaf in frames[-1] for idle_leaf in IDLE_LEAVES)
        if not _is_event_loop_thread(frames):
            other_threads_busy += 0 if waiting else count
            continue
        if waiting:
            idle += count
            continue
        by_stage[stage_of(frames)] += count
        own[_frame_name(frames[-1])] += count
    busy = sum(by_stage.values())

    def share(count: int) -> float:
        return round(count / busy, 4) if busy else 0.0

    def ms(count: int) -> float | None:
        return None if cpu_ms_per_input is None or not busy else round(cpu_ms_per_input * count / busy, 3)

    order = (
        [stage for stage, _, _ in STAGE_FRAMES]
        + list(dict.fromkeys(s for s, _ in RUNTIME_PACKAGES))
        + [OTHER]
    )
    return {
        "sample_rate": SAMPLE_RATE,
        "busy_samples": busy,
        "idle_samples": idle,
        # Busy samples of the worker's other threads (faust's consumer thread decoding fetches, the
        # metrics server): small, which is what lets the shares stand for the whole process's CPU.
        "other_threads_busy_samples": other_threads_busy,
        "cpu_ms_per_input": cpu_ms_per_input,
        "stages": [
            {
                "stage": stage,
                "samples": by_stage[stage],
                "share": share(by_stage[stage]),
                "ms_per_input": ms(by_stage[stage]),
            }
            for stage in order
        ],
        "top_own": [
            {"function": name, "samples": count, "share": share(count)}
            for name, count in own.most_common(top)
        ],
    }


def render(summary: Mapping[str, Any], source: str) -> str:
    """The summary as the text ``hub bench --sample`` prints."""
    per_input = summary["cpu_ms_per_input"]
    lines = [
        f"where the single worker's CPU went in the throughput phase ({source}: py-spy, "
        f"{summary['sample_rate']} samples/s, {summary['busy_samples']:,} busy samples of its event loop, "
        f"{summary['other_threads_busy_samples']:,} of its other threads)",
        f"  {'share':>6} {'ms/input':>9}  stage",
    ]
    for row in summary["stages"]:
        ms = f"{row['ms_per_input']:9.2f}" if row["ms_per_input"] is not None else f"{'-':>9}"
        lines.append(f"  {100 * row['share']:5.1f}% {ms}  {row['stage']}")
    if per_input is not None:
        lines.append(
            f"  {'100.0%':>6} {per_input:9.2f}  "
            "the worker's CPU per input in the phase (ms/input: share x this)"
        )
    lines.append("  busiest functions (own time):")
    lines.extend(f"  {100 * row['share']:5.1f}%  {row['function']}" for row in summary["top_own"])
    return "\n".join(lines)


def summarise_file(path: Path, *, cpu_ms_per_input: float | None = None) -> dict[str, Any]:
    """:func:`summarise` of a py-spy raw file, with the file's path."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        return {"file": str(path), **summarise(lines, cpu_ms_per_input=cpu_ms_per_input)}
