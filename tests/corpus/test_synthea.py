"""Every Synthea R4 bundle of the shared data set through ``hub publish``'s splitting and the ingest core.

``hub.publish.publications_for_file`` signs each file and splits the bundles over the source's payload
limit, exactly as ``hub publish`` does (the limit here is 256 KiB, so most bundles are split); each
record then goes through ``process_ingest``. Zero rejects, and all the events of one file name one
network patient. The integration tier sends the same files through Kafka; this is the fast, pure check.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hub.ingest.outcome import Rejected
from hub.publish import publications_for_file

SYNTHEA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthea-r4"
SYNTHEA_FILES = sorted(SYNTHEA_DIR.glob("*.json")) if SYNTHEA_DIR.is_dir() else []
#: The signatures' clock: the conftest's NOW (2024-05-03T10:00Z), so they are fresh for the hub.
SIGNED_AT = 1_714_730_400


def _file_id(path: Path) -> str:
    # The uuid at the end of the name, not the (synthetic) patient's name.
    return path.stem.rpartition("_")[2][:8]


@pytest.mark.parametrize(
    "path",
    SYNTHEA_FILES
    or [pytest.param(None, marks=pytest.mark.skip(reason=f"Synthea data folder {SYNTHEA_DIR} is absent"))],
    ids=_file_id if SYNTHEA_FILES else None,
)
def test_synthea_bundle_is_accepted_as_one_patient(
    path: Path, synthea_hub: Any, synthea_counts: Counter[str]
) -> None:
    """No reject in any part of the file, and a single network patient id across all its events."""
    publications = publications_for_file(
        path,
        source_id=synthea_hub.source.id,
        secret=synthea_hub.secret,
        max_bytes=synthea_hub.context.max_payload_bytes,
        now=SIGNED_AT,
    )
    patient_ids: set[str] = set()
    event_ids: set[str] = set()  # a split bundle repeats its Patient in each part: the same event
    for publication in publications:
        outcome = synthea_hub.ingest(publication.value, publication.headers)
        assert not isinstance(outcome, Rejected), (
            f"{publication.label}: rejected {outcome.code}: {outcome.detail}"
        )
        patient_ids.update(event.patient_id for event in outcome.events)
        event_ids.update(event.event_id for event in outcome.events)
    assert event_ids, f"{path.name}: accepted but no pathway event"
    assert len(patient_ids) == 1, f"{path.name}: events name {len(patient_ids)} network patients, not one"
    synthea_counts.update(
        files=1, records=len(publications), split=int(len(publications) > 1), events=len(event_ids)
    )
