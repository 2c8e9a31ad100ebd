"""What the docs tell a new user to run or set is what the code takes: the README's signing snippet runs
and signs as the hub verifies, and docs/RUNNING.md's settings table names every setting."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from hub.ingest.signature import verify
from hub.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(markdown: str) -> list[str]:
    """The ```python blocks of a Markdown text, dedented (a block inside a list item is indented)."""
    blocks = []
    for match in re.finditer(r"^( *)```python\n(.*?)^\1```", markdown, flags=re.MULTILINE | re.DOTALL):
        indent = len(match.group(1))
        blocks.append("\n".join(line[indent:] for line in match.group(2).splitlines()))
    return blocks


def test_the_readmes_signing_snippet_runs_and_the_hub_accepts_its_signature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The snippet, run as written (its secret from the environment), gives headers whose hub-signature
    the hub's verify accepts for its source and value."""
    [snippet] = [
        block for block in python_blocks((ROOT / "README.md").read_text("utf-8")) if "sign(" in block
    ]
    secret = "readme-snippet-secret-0123456789abcdef"
    monkeypatch.setenv("HUB_SECRET_CHU_PAP", secret)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    headers = dict(namespace["headers"])
    source = headers["hub-source"].decode()
    problem = verify(
        headers["hub-signature"].decode(),
        secrets=[secret.encode()],
        source_id=source,
        value=namespace["value"],
        now=int(time.time()),
        tolerance_seconds=300,
    )
    assert problem is None


def test_every_setting_is_in_the_settings_table_of_running_md() -> None:
    """Each HUB_ variable Settings reads has a row in docs/RUNNING.md's settings table."""
    text = (ROOT / "docs" / "RUNNING.md").read_text("utf-8")
    table = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    documented = set(re.findall(r"`(HUB_[A-Z0-9_]+)`", "\n".join(rows)))
    missing = {f"HUB_{name.upper()}" for name in Settings.model_fields} - documented
    assert not missing, f"docs/RUNNING.md's settings table lacks {sorted(missing)}"
