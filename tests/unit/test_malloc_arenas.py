"""hub.streams.store.limit_malloc_arenas: a worker's threads share two glibc malloc arenas, not one each.

Counted by glibc itself (``malloc_info``'s ``<heap>`` elements) in a fresh interpreter whose eight
threads each allocate while the others still hold their blocks: without the limit each thread gets
an arena of its own (nine heaps on two cores), with it two. MALLOC_ARENA_MAX, read by glibc at start, wins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import ctypes, re, sys, threading
from hub.streams.store import limit_malloc_arenas
limited = limit_malloc_arenas() if sys.argv[1] == "limit" else None
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
together = threading.Barrier(8)
held = []

def allocate():
    together.wait()  # all eight allocate at once, so none can reuse another's arena
    blocks = [libc.malloc(1000) for _ in range(200)]
    together.wait()
    held.extend(blocks)

threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
report = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, report)
libc.fclose(report)
print(limited, len(re.findall("<heap nr=", open(sys.argv[2]).read())))
"""


def heaps(mode: str, folder: Path, environ: dict[str, str] | None = None) -> tuple[str, int]:
    """(what limit_malloc_arenas returned, glibc's heap count) in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (environ or {})
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(folder / f"{mode}.xml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    limited, count = result.stdout.split()
    return limited, int(count)


def test_the_worker_limit_keeps_eight_allocating_threads_in_two_arenas(tmp_path: Path) -> None:
    _, count = heaps("none", tmp_path)
    # glibc's default: an arena per allocating thread up to eight per core (nine heaps here, with the
    # main thread's; eight on a one-core machine).
    assert count >= 8, f"{count} heaps: glibc's default should give each allocating thread its own"
    assert heaps("limit", tmp_path) == ("True", 2)


def test_the_operators_malloc_arena_max_wins(tmp_path: Path) -> None:
    assert heaps("limit", tmp_path, {"MALLOC_ARENA_MAX": "4"}) == ("False", 4)
