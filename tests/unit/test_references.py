"""Stable resource ids and references: what a Bundle's addresses become, and what is left alone."""

from __future__ import annotations

from hub.normalise.references import SOURCE_REFERENCE_URL, address_book, stable_id, with_stable_references

ENCOUNTER_URL = "urn:uuid:11111111-2222-4333-8444-555555555555"
ENCOUNTER = {"resourceType": "Encounter", "status": "finished"}


def observation(**fields: object) -> dict[str, object]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **fields}


def test_a_urn_uuid_reference_becomes_the_entrys_stable_id() -> None:
    """A reference to another entry by its urn:uuid full URL is rewritten to Type/<stable id>."""
    book = address_book("gp", [(ENCOUNTER_URL, ENCOUNTER)])
    out, changed = with_stable_references(
        observation(encounter={"reference": ENCOUNTER_URL}), source_id="gp", book=book
    )
    assert changed
    assert out["encounter"] == {"reference": f"Encounter/{stable_id('gp', ENCOUNTER_URL)}"}


def test_a_relative_reference_is_stable_per_source_and_never_collides_across_sources() -> None:
    """Type/id outside the Bundle: the same stable id every time for one source, another for another."""
    one, _ = with_stable_references(
        observation(performer=[{"reference": "Practitioner/7"}]), source_id="a", book={}
    )
    again, _ = with_stable_references(
        observation(performer=[{"reference": "Practitioner/7"}]), source_id="a", book={}
    )
    other, _ = with_stable_references(
        observation(performer=[{"reference": "Practitioner/7"}]), source_id="b", book={}
    )
    assert one == again
    assert one["performer"] != other["performer"]


def test_the_resources_own_id_follows_its_address() -> None:
    """An entry with an id gets the stable id others use to reference it."""
    encounter = {**ENCOUNTER, "id": "enc-1"}
    book = address_book("gp", [(ENCOUNTER_URL, encounter)])
    out, changed = with_stable_references(encounter, source_id="gp", book=book)
    assert changed
    assert out["id"] == stable_id("gp", "Encounter/enc-1")
    assert book[ENCOUNTER_URL].reference == f"Encounter/{out['id']}"


def test_a_reference_to_a_bundle_practitioner_carries_its_rpps() -> None:
    """A GP named by urn:uuid inside the Bundle is also named by RPPS, so recipients and alerts find them."""
    gp_url = "urn:uuid:99999999-2222-4333-8444-555555555555"
    gp = {
        "resourceType": "Practitioner",
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "10009900019"}],
    }
    patient = {"resourceType": "Patient", "generalPractitioner": [{"reference": gp_url}]}
    out, _ = with_stable_references(patient, source_id="gp", book=address_book("gp", [(gp_url, gp)]))
    assert out["generalPractitioner"][0]["identifier"] == {
        "system": "urn:oid:1.2.250.1.71.4.2.1",
        "value": "10009900019",
    }


def test_other_servers_contained_resources_and_identifiers_are_left_alone() -> None:
    """Absolute URLs, #contained references and logical references by identifier are not rewritten."""
    resource = observation(
        basedOn=[{"reference": "http://other.example/fhir/ServiceRequest/1"}],
        specimen={"reference": "#spec"},
        performer=[{"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "10009900019"}}],
    )
    out, changed = with_stable_references(resource, source_id="gp", book={})
    assert (out, changed) == (resource, False)


def test_the_input_is_not_mutated() -> None:
    """Rewriting returns a new resource; the decoded input stays as it was."""
    resource = observation(encounter={"reference": "Encounter/9"})
    with_stable_references(resource, source_id="gp", book={})
    assert resource["encounter"] == {"reference": "Encounter/9"}


def test_a_consent_keeps_its_sources_own_id_in_meta_for_a_dpo_to_find_it() -> None:
    """Consent/<id> as the source sent it, under meta (out of the event id); other types keep none."""
    consent = {"resourceType": "Consent", "id": "consent-42", "status": "active"}
    out, _ = with_stable_references(consent, source_id="gp", book=address_book("gp", [(None, consent)]))
    assert out["id"] == stable_id("gp", "Consent/consent-42")
    assert out["meta"]["extension"] == [{"url": SOURCE_REFERENCE_URL, "valueString": "Consent/consent-42"}]
    other = observation(id="obs-1")
    out, _ = with_stable_references(other, source_id="gp", book=address_book("gp", [(None, other)]))
    assert "meta" not in out
