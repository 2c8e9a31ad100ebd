"""hub.streams.store.tune_malloc: a worker's glibc malloc, two arenas and a fixed mmap threshold.

Arenas: counted by glibc itself (``malloc_info``'s ``<heap>`` elements) in a fresh interpreter whose
eight threads each allocate while the others still hold their blocks: without the limit each thread
gets an arena of its own (nine heaps on two cores), with it two. MALLOC_ARENA_MAX, read by glibc at
start, wins.

mmap threshold: in a fresh interpreter, a 1 MiB block freed, then 512 KiB asked for. glibc alone has
raised its threshold to the freed block's size, so the 512 KiB come from the heap; fixed, they are
mapped for themselves (``mallinfo2``'s ``hblkhd``, bytes in mapped blocks), and given back when freed.
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


THRESHOLD_PROBE = """
import ctypes, sys
from hub.streams.store import fix_mmap_threshold
fixed = fix_mmap_threshold() if sys.argv[1] == "fix" else None

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = MallInfo2
libc.free(libc.malloc(1024 * 1024))
before = libc.mallinfo2().hblkhd
block = libc.malloc(512 * 1024)
print(fixed, libc.mallinfo2().hblkhd - before)
"""


def mapped_after_a_large_free(mode: str, environ: dict[str, str] | None = None) -> tuple[str, int]:
    """(what fix_mmap_threshold returned, bytes newly mapped for a 512 KiB block after a 1 MiB free)."""
    # Any of glibc's malloc settings from the environment (a trim threshold, a top pad) also stops it
    # raising the threshold by itself: none of them here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    result = subprocess.run(
        [sys.executable, "-c", THRESHOLD_PROBE, mode],
        capture_output=True,
        text=True,
        env=env | (environ or {}),
        timeout=60,
        check=True,
    )
    fixed, mapped = result.stdout.split()
    return fixed, int(mapped)


def test_a_fixed_mmap_threshold_maps_large_blocks_after_a_larger_one_was_freed() -> None:
    # glibc alone: the freed 1 MiB raised the threshold, the 512 KiB block comes from the heap.
    assert mapped_after_a_large_free("none") == ("None", 0)
    fixed, mapped = mapped_after_a_large_free("fix")
    assert fixed == "True"
    assert mapped >= 512 * 1024


def test_the_operators_mmap_threshold_wins() -> None:
    # The operator's 2 MiB: the worker leaves it, and the 512 KiB block comes from the heap.
    assert mapped_after_a_large_free("fix", {"MALLOC_MMAP_THRESHOLD_": str(2 * 1024 * 1024)}) == ("False", 0)
