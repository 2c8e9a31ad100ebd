"""hub.kafka.clients.in_daemon_thread: a blocking call awaited without holding the process at exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from hub.kafka.clients import in_daemon_thread


def test_the_call_s_result_and_error_reach_the_awaiting_task_from_a_daemon_thread() -> None:
    def where() -> tuple[str, bool]:
        thread = threading.current_thread()
        return thread.name, thread.daemon

    def failing() -> None:
        raise ValueError("refused")

    async def main() -> tuple[str, bool]:
        with pytest.raises(ValueError, match="refused"):
            await in_daemon_thread(failing)
        return await in_daemon_thread(where)

    name, daemon = asyncio.run(main())
    assert daemon and name == "hub-where"


def test_a_process_stopping_while_the_call_waits_exits_at_once() -> None:
    """asyncio.to_thread's threads are joined at exit: a call waiting 30 s held the worker 30 s."""
    program = """
import asyncio, time
from hub.kafka.clients import in_daemon_thread

async def main():
    asyncio.get_running_loop().call_later(0.2, stop.set)
    waiting = asyncio.ensure_future(in_daemon_thread(time.sleep, 30))
    await stop.wait()
    waiting.cancel()

stop = asyncio.Event()
asyncio.run(main())
"""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", program], check=True, timeout=25)
    assert time.monotonic() - started < 20, "the process waited for the sleeping thread"
