"""A worker names its metrics address in the state folder while it runs, so `hub status` and the
console find it on any port (HUB_METRICS_PORT=0); a killed worker's file is never taken for a live one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from hub.console.scrape import targets
from hub.metrics import advertised, advertisement_dir
from hub.settings import Settings

#: What a worker bound to every interface names; status dials it on loopback.
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 - an address named, nothing is bound here

#: A stand-in worker: advertises like `hub worker` does, says so, and waits to be killed.
WORKER = """
import sys
from pathlib import Path
from hub.metrics import advertise
path = advertise(Path(sys.argv[1]), sys.argv[2], "0.0.0.0", int(sys.argv[3]))
print(path, flush=True)
sys.stdin.read()
"""


def run_advertiser(state_dir: Path, app_id: str, port: int) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(state_dir), app_id, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_running_worker_is_found_and_a_killed_one_is_not(tmp_path: Path) -> None:
    """Found while it runs (its app id only); after kill -9 its file stays but is ignored, then swept."""
    process, path = run_advertiser(tmp_path, "hub-a", 40123)
    try:
        assert json.loads(path.read_text())["port"] == 40123
        assert advertised(tmp_path, "hub-a") == [(EVERY_INTERFACE, 40123)]
        assert advertised(tmp_path, "hub-b") == []
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert path.exists() and advertised(tmp_path, "hub-a") == []
    other, other_path = run_advertiser(tmp_path, "hub-a", 40124)
    try:
        assert not path.exists()  # the next worker to advertise removes what the killed one left
        assert advertised(tmp_path, "hub-a") == [(EVERY_INTERFACE, 40124)]
    finally:
        assert other.stdin is not None
        other.stdin.close()  # a normal exit: the worker removes its own file
        other.wait()
    assert not other_path.exists()


def test_a_file_nobody_holds_is_ignored(tmp_path: Path) -> None:
    """Written by hand, or left by a crash: no lock, no worker."""
    folder = advertisement_dir(tmp_path)
    folder.mkdir()
    (folder / "worker-1.json").write_text(json.dumps({"app_id": "hub", "host": "127.0.0.1", "port": 9}))
    assert advertised(tmp_path, "hub") == []


def test_status_targets_an_advertised_worker_and_not_port_zero(tmp_path: Path) -> None:
    """HUB_METRICS_PORT=0: the advertised worker is the required target; port 0 only without one."""
    settings = Settings(
        state_dir=tmp_path, app_id="hub-a", metrics_port=0, console_worker_urls="", console_gateway_url="none"
    )
    (alone,) = targets(settings)
    assert alone.url.endswith(":0/metrics") and not alone.optional
    process, _ = run_advertiser(tmp_path, "hub-a", 40125)
    try:
        found = targets(settings)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    required = [t.url for t in found if not t.optional]
    assert required == ["http://127.0.0.1:40125/metrics"]  # 0.0.0.0 is dialled on loopback
