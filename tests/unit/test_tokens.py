"""The shared hashed-token file (hub.tokens) as the gateway's and the console's stores use it."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.console.tokens import TOKEN_PREFIX as OPERATOR_PREFIX
from hub.console.tokens import OperatorTokens
from hub.errors import ConfigError
from hub.gateway.tokens import TOKEN_PREFIX as GP_PREFIX
from hub.gateway.tokens import TokenStore
from hub.tokens import hash_token

GP = "10009900014"
ISSUED = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)


def test_each_file_keeps_its_own_layout(tmp_path: Path) -> None:
    """GP files carry a version and ``practitioner``; operator files no version and ``operator``."""
    gp = TokenStore(tmp_path / "gp.json")
    operators = OperatorTokens(tmp_path / "operators.json")
    gp_token = gp.issue(GP, now=ISSUED)
    operator_token = operators.issue(" alice ", now=ISSUED)

    assert gp_token.startswith(GP_PREFIX)
    assert operator_token.startswith(OPERATOR_PREFIX)
    gp_document = json.loads(gp.path.read_text(encoding="utf-8"))
    operator_document = json.loads(operators.path.read_text(encoding="utf-8"))
    assert list(gp_document) == ["version", "comment", "tokens"]
    assert gp_document["version"] == 1
    assert list(operator_document) == ["comment", "tokens"]
    assert gp_document["tokens"] == [
        {"practitioner": GP, "sha256": hash_token(gp_token), "issued_at": "2026-03-01T08:30:15Z"}
    ]
    assert operator_document["tokens"] == [
        {"operator": "alice", "sha256": hash_token(operator_token), "issued_at": "2026-03-01T08:30:15Z"}
    ]
    for path in (gp.path, operators.path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gp.json", "operators.json"]  # no temporary left


def test_files_written_before_the_store_was_shared_still_load(tmp_path: Path) -> None:
    """A hand-written file in each existing format verifies its token as its holder."""
    gp_path, operator_path = tmp_path / "gp.json", tmp_path / "operators.json"
    gp_path.write_text(
        json.dumps({"version": 1, "tokens": [{"practitioner": GP, "sha256": hash_token("hubgp_a")}]}),
        encoding="utf-8",
    )
    operator_path.write_text(
        json.dumps({"tokens": [{"operator": "bob", "sha256": hash_token("hubop_b"), "issued_at": "x"}]}),
        encoding="utf-8",
    )
    assert TokenStore(gp_path).verify("hubgp_a") == GP
    assert [e.issued_at for e in TokenStore(gp_path).entries()] == [""]
    assert OperatorTokens(operator_path).verify("hubop_b") == "bob"
    # Each store reads its own holder field only: a GP file is not an operator file.
    with pytest.raises(ConfigError, match="needs 'operator'"):
        OperatorTokens(gp_path).entries()


def test_errors_name_the_file_and_the_right_command(tmp_path: Path) -> None:
    """A corrupt file's hint names the command of the store that read it."""
    path = tmp_path / "tokens.json"
    path.write_text('{"tokens": "none"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="gateway token file") as gp_error:
        TokenStore(path).verify("hubgp_x")
    with pytest.raises(ConfigError, match="operator token file") as operator_error:
        OperatorTokens(path).verify("hubop_x")
    assert str(path) in str(gp_error.value)
    assert "hub gateway token issue <RPPS>" in (gp_error.value.hint or "")
    assert "hub console token issue <operator>" in (operator_error.value.hint or "")


def test_an_unwritable_place_names_the_setting_that_moves_it(tmp_path: Path) -> None:
    """The folder cannot be made (a dangling link holds its name): a ConfigError naming the setting."""
    (tmp_path / "folder").symlink_to(tmp_path / "missing")
    with pytest.raises(ConfigError, match="cannot write the gateway token file") as gp_error:
        TokenStore(tmp_path / "folder" / "gp.json").issue(GP)
    with pytest.raises(ConfigError, match="cannot write the operator token file") as operator_error:
        OperatorTokens(tmp_path / "folder" / "operators.json").issue("alice")
    assert "HUB_GATEWAY_TOKENS_FILE" in (gp_error.value.hint or "")
    assert "HUB_CONSOLE_TOKENS_FILE" in (operator_error.value.hint or "")


@pytest.mark.parametrize("name", ["", "alice; rm -rf /", "../x", "a" * 65])
def test_a_malformed_operator_is_refused_before_the_file_is_touched(tmp_path: Path, name: str) -> None:
    """Issuing and revoking check the name first; nothing is written for a refused one."""
    tokens = OperatorTokens(tmp_path / "operators.json")
    with pytest.raises(ConfigError, match="not an operator name"):
        tokens.issue(name)
    with pytest.raises(ConfigError, match="not an operator name"):
        tokens.revoke(name)
    assert not tokens.path.exists()
