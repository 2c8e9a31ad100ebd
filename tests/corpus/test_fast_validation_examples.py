"""Every official FHIR R4 example, of every resource type: the compiled first look
(hub/normalise/fast_validation.py) accepts exactly what the R4B models accept.

Its promise is one way (never accept what the models refuse); that it also accepts what they accept is
what makes it worth having, and on the official examples it does, all of them. Files above 300 KB (the
terminology and conformance bundles) are left out: minutes of model validation for nothing the hub
ingests.
"""

from __future__ import annotations

import json
from pathlib import Path

from hub.normalise import fast_validation
from tests.unit.test_fast_validation import models_validate

MAX_BYTES = 300_000


def test_the_compiled_check_and_the_models_accept_the_same_official_examples(examples_dir: Path) -> None:
    checked, unsound, left_to_models = 0, [], []
    for path in sorted(examples_dir.glob("*-*.json")):
        if path.stat().st_size > MAX_BYTES:
            continue
        document = json.loads(path.read_bytes())
        if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
            continue
        checked += 1
        accepted_first = fast_validation.models_accept(document, "4.0")
        accepted = models_validate(document, "4.0")
        if accepted_first and not accepted:
            unsound.append(path.name)
        elif accepted and not accepted_first:
            left_to_models.append(path.name)
    assert checked > 5000, f"only {checked} examples: the package layout has changed"
    assert unsound == [], "accepted by the compiled check, refused by the models"
    assert left_to_models == [], "accepted by the models, left to them by the compiled check"
