"""Load and apply the JSON Schemas in the project's ``schemas/`` folder."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

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
