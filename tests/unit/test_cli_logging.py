"""Every `hub` command logs to stderr, never to stdout, where a command's own output (JSON) goes.

structlog's default configuration prints to stdout: `hub erase --json --wait-ingest` once printed an
``ingest.rolled`` line before its JSON report, and tests/integration/test_erasure_bound.py failed on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from click.testing import CliRunner

from hub.cli import main
from hub.logging import get_logger


@main.command("log-probe", hidden=True)
def _log_probe() -> None:
    """A command that logs a line and prints JSON, as the operators' commands do."""
    get_logger("hub.crypto.retention").info("ingest.rolled", partitions=[0, 2])
    print(json.dumps({"patient_ids": []}))


@pytest.fixture
def logging_as_a_fresh_process() -> Iterator[None]:
    """structlog and the root logger as a new `hub` process has them, and as they were afterwards (the
    command's handler writes to the runner's stream, closed once it returns)."""
    handlers, level = logging.getLogger().handlers[:], logging.getLogger().level
    saved = structlog.get_config()
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []
    yield
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers
    logging.getLogger().setLevel(level)


@pytest.mark.usefixtures("logging_as_a_fresh_process")
def test_a_commands_log_lines_go_to_stderr_and_its_json_alone_to_stdout() -> None:
    result = CliRunner().invoke(main, ["log-probe"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"patient_ids": []}
    assert "ingest.rolled" in result.stderr
