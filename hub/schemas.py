"""Read configuration files and apply the JSON Schemas in the project's ``schemas/`` folder."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from hub.errors import ConfigError

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


@cache
def validator(name: str) -> Draft202012Validator:
    """A validator for ``schemas/<name>``, compiled once."""
    schema = json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_errors(name: str, document: Any) -> list[str]:
    """Every violation of ``schemas/<name>`` as ``field.path: message`` lines; empty when valid."""
    found = sorted(validator(name).iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in found]


def read_json_config(path: Path, *, what: str, hint: str) -> Any:
    """A configuration file's JSON document; any read or syntax fault is a ConfigError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}", hint=hint) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text", hint="save the file as UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not JSON (line {exc.lineno}, column {exc.colno})",
            hint="fix the syntax error at that position",
        ) from exc
