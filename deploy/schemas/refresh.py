"""Rebuild the vendored JSON Schemas of deploy/ from their registry packages (see README.md here).

Not run by the tests: they read the committed schemas, offline. Run it by hand to move to newer
versions, with the three inputs fetched by their ordinary clients:

    pip download --no-deps kubernetes-validate==1.37.0 check-jsonschema==0.39.0 -d /tmp/schemas
    (Strimzi CRDs) mvn dependency:build-classpath on io.strimzi:api + io.strimzi:crd-generator 1.2.0,
    then java (21+) -cp <classpath> io.strimzi.crdgenerator.CrdGenerator --yaml --api-versions v1 \\
        --storage-version v1 io.strimzi.api.kafka.model.kafka.Kafka=kafka.yaml ... (one per kind)

    python deploy/schemas/refresh.py --wheels /tmp/schemas --crds /tmp/crds
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
KUBERNETES_VERSION = "v1.33.0"
#: The built-in kinds deploy/k8s uses: schema file name in kubernetes-validate → our file name.
KUBERNETES_KINDS = {
    "deployment-apps-v1.json": "deployment-apps-v1.json",
    "poddisruptionbudget-policy-v1.json": "poddisruptionbudget-policy-v1.json",
    "service-v1.json": "service-v1.json",
    "configmap-v1.json": "configmap-v1.json",
    "serviceaccount-v1.json": "serviceaccount-v1.json",
    "networkpolicy-networking-v1.json": "networkpolicy-networking-v1.json",
    "namespace-v1.json": "namespace-v1.json",
    "persistentvolumeclaim-v1.json": "persistentvolumeclaim-v1.json",
}
STRIMZI_KINDS = ("kafka", "kafkanodepool", "kafkatopic", "kafkauser")


def _strip(node: Any) -> Any:
    """Descriptions make up most of the bytes and none of the checks: drop them."""
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description" or not isinstance(v, str)}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _local_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: ("#/$defs/" + v.rsplit("/", 1)[-1] if k == "$ref" and isinstance(v, str) else _local_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


def kubernetes(wheel: Path, out: Path) -> None:
    """One self-contained schema per kind: its definitions copied in, references made local."""
    base = f"kubernetes_validate/kubernetes-json-schema/{KUBERNETES_VERSION}-local-strict/"
    with zipfile.ZipFile(wheel) as archive:
        definitions = json.loads(archive.read(base + "_definitions.json"))["$defs"]
        for source_name, target_name in KUBERNETES_KINDS.items():
            schema = json.loads(archive.read(base + source_name))
            wanted: set[str] = set()
            pending = _refs(schema)
            while pending:
                name = pending.pop()
                if name not in wanted:
                    wanted.add(name)
                    pending |= _refs(definitions[name])
            bundled = {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                **{k: v for k, v in schema.items() if k not in ("$schema", "$id")},
                "$defs": {name: definitions[name] for name in sorted(wanted)},
            }
            target = out / "kubernetes" / target_name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(_strip(_local_refs(bundled)), indent=1, sort_keys=True) + "\n")


def _closed(node: Any) -> Any:
    """Reject unknown fields, as the API server's strict field validation does (kubectl's default)."""
    if isinstance(node, dict):
        copy = {k: _closed(v) for k, v in node.items()}
        if (
            copy.get("type") == "object"
            and "properties" in copy
            and "additionalProperties" not in copy
            and not copy.get("x-kubernetes-preserve-unknown-fields")
        ):
            copy["additionalProperties"] = False
        return copy
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


def strimzi(crds: Path, out: Path) -> None:
    """The served v1 schema of each Strimzi CRD, with apiVersion and kind pinned and metadata required."""
    for kind in STRIMZI_KINDS:
        crd = yaml.safe_load((crds / f"{kind}.yaml").read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = _closed(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1"}
        schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
        schema["properties"]["metadata"] = {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
        }
        schema["required"] = sorted({"apiVersion", "kind", "metadata", *schema.get("required", ())})
        target = out / "strimzi" / f"{kind}-kafka.strimzi.io-v1.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        bundled = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
        target.write_text(json.dumps(_strip(bundled), indent=1, sort_keys=True) + "\n")


def compose(wheel: Path, out: Path) -> None:
    """The Compose Specification's schema as check-jsonschema vendors it."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read("check_jsonschema/builtin_schemas/vendor/compose-spec.json")
    (out / "compose-spec.json").write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, required=True, help="folder with the two downloaded wheels")
    parser.add_argument("--crds", type=Path, required=True, help="folder with the generated Strimzi CRDs")
    args = parser.parse_args()
    kubernetes(next(args.wheels.glob("kubernetes_validate-*.whl")), HERE)
    compose(next(args.wheels.glob("check_jsonschema-*.whl")), HERE)
    strimzi(args.crds, HERE)


if __name__ == "__main__":
    main()
