"""deploy/ checked without a Docker engine or a cluster: JSON Schemas, then agreement with the code.

The schemas are vendored under deploy/schemas/ (sources and licences in its README.md): the Compose
Specification's, Kubernetes 1.33's strict ones for the built-in kinds, and Strimzi's CRDs (v1) with
unknown fields rejected. Then: topic names against hub/topics.py, KafkaUsers against the ACL plan of
hub/acl (from config/*.demo.json), variable names against hub/settings.py, Secrets referenced and never
embedded, the image non-root, the dashboards' metric names against hub/metrics.py.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import validators

from hub.acl.model import Pattern, Resource, plan_acls, recipient_user, source_user
from hub.metrics import REGISTRY
from hub.settings import Settings
from hub.streams.tables import TABLES
from hub.topics import (
    CONTRACT_TOPICS,
    INGEST,
    INTERNAL_TOPICS,
    TopicNames,
    recipient_pathway,
    source_receipts,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
SOURCES = json.loads((ROOT / "config" / "sources.demo.json").read_text())["sources"]
RECIPIENTS = json.loads((ROOT / "config" / "recipients.demo.json").read_text())["recipients"]

#: (apiVersion, kind) → the vendored schema that validates it. A kind missing here fails the test.
K8S_SCHEMAS = {
    ("v1", "Namespace"): "kubernetes/namespace-v1.json",
    ("v1", "ConfigMap"): "kubernetes/configmap-v1.json",
    ("v1", "Service"): "kubernetes/service-v1.json",
    ("v1", "ServiceAccount"): "kubernetes/serviceaccount-v1.json",
    ("v1", "PersistentVolumeClaim"): "kubernetes/persistentvolumeclaim-v1.json",
    ("apps/v1", "Deployment"): "kubernetes/deployment-apps-v1.json",
    ("policy/v1", "PodDisruptionBudget"): "kubernetes/poddisruptionbudget-policy-v1.json",
    ("networking.k8s.io/v1", "NetworkPolicy"): "kubernetes/networkpolicy-networking-v1.json",
    ("kafka.strimzi.io/v1", "Kafka"): "strimzi/kafka-kafka.strimzi.io-v1.json",
    ("kafka.strimzi.io/v1", "KafkaNodePool"): "strimzi/kafkanodepool-kafka.strimzi.io-v1.json",
    ("kafka.strimzi.io/v1", "KafkaTopic"): "strimzi/kafkatopic-kafka.strimzi.io-v1.json",
    ("kafka.strimzi.io/v1", "KafkaUser"): "strimzi/kafkauser-kafka.strimzi.io-v1.json",
}
#: Names of settings that hold a secret: only ever given as a file path, never as a value.
SECRET_SETTINGS = re.compile(r"^HUB_(.*_)?(PASSWORD|KEY|KEK|SECRET|TOKEN)$")


@cache
def schema(name: str) -> Any:
    return json.loads((SCHEMAS / name).read_text())


def errors(schema_name: str, document: Any) -> list[str]:
    """Every schema error of ``document``, as ``path: message``."""
    document_schema = schema(schema_name)
    validator = validators.validator_for(document_schema)(document_schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}"
        for e in validator.iter_errors(document)
    ]


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@cache
def k8s_documents() -> tuple[tuple[str, Any], ...]:
    """(file, document) for every manifest under deploy/k8s."""
    found = []
    for path in k8s_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append((str(path.relative_to(ROOT)), document))
    return tuple(found)


def of_kind(kind: str) -> list[Any]:
    return [d for _, d in k8s_documents() if d["kind"] == kind]


@cache
def compose() -> Any:
    return yaml.safe_load(COMPOSE.read_text())


def settings_variables() -> set[str]:
    return {"HUB_" + name.upper() for name in Settings.model_fields}


# --- schemas -------------------------------------------------------------------------------------


def test_the_compose_file_is_valid_for_the_compose_specification() -> None:
    """deploy/compose/compose.yaml against the Compose Specification's JSON Schema."""
    assert errors("compose-spec.json", compose()) == []
    print(f"compose: {len(compose()['services'])} services valid")


@pytest.mark.parametrize(
    "index",
    range(len(k8s_documents())),
    ids=lambda i: "/".join(
        (k8s_documents()[i][0].removeprefix("deploy/k8s/"), k8s_documents()[i][1]["metadata"]["name"])
    ),
)
def test_every_kubernetes_manifest_is_valid_for_its_schema(index: int) -> None:
    """Each manifest against the strict schema of its kind; a kind without a vendored schema fails."""
    path, document = k8s_documents()[index]
    key = (document["apiVersion"], document["kind"])
    assert key in K8S_SCHEMAS, f"{path}: no vendored schema for {key}; add one (deploy/schemas/refresh.py)"
    assert errors(K8S_SCHEMAS[key], document) == []


def test_the_schemas_reject_what_a_cluster_would_reject() -> None:
    """The checks can fail: a typo'd field, a wrong type and a bad enum are each reported."""
    topic = copy.deepcopy(of_kind("KafkaTopic")[0])
    topic["spec"]["replicas"] = "three"
    assert errors(K8S_SCHEMAS["kafka.strimzi.io/v1", "KafkaTopic"], topic)
    user = copy.deepcopy(of_kind("KafkaUser")[0])
    user["spec"]["authentication"]["type"] = "scram-sha-256"
    assert errors(K8S_SCHEMAS["kafka.strimzi.io/v1", "KafkaUser"], user)
    deployment = copy.deepcopy(of_kind("Deployment")[0])
    deployment["spec"]["replicas"] = "two"
    deployment["spec"]["replica"] = 2
    assert len(errors(K8S_SCHEMAS["apps/v1", "Deployment"], deployment)) == 2
    broken = copy.deepcopy(compose())
    broken["services"]["worker-1"]["restart_policy"] = "always"
    assert errors("compose-spec.json", broken)


def test_kustomization_lists_every_manifest() -> None:
    """`kubectl apply -k deploy/k8s` applies every file here, and only files that exist."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {K8S / name for name in kustomization["resources"]}
    assert listed == set(k8s_files())


# --- agreement with the code ------------------------------------------------------------------


def test_kafka_topics_are_the_hubs_with_three_replicas_and_two_in_sync() -> None:
    """Every KafkaTopic is a hub topic, every hub topic has one; replicas 3, min.insync.replicas 2."""
    topics = {t["spec"]["topicName"]: t["spec"] for t in of_kind("KafkaTopic")}
    expected = {
        *CONTRACT_TOPICS,
        *INTERNAL_TOPICS,
        *(recipient_pathway(r["id"]) for r in RECIPIENTS),
        *(source_receipts(s["id"]) for s in SOURCES),
        *(TopicNames.changelog("hub", table) for table in TABLES),
        "hub-__assignor-__leader",
    }
    assert set(topics) == expected
    partitions = {int(env["HUB_TOPIC_PARTITIONS"]) for env in hub_environments()}
    for name, spec in topics.items():
        assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == "2", name
        if not name.endswith("__leader"):
            assert {spec["partitions"]} == partitions, f"{name}: partitions differ from HUB_TOPIC_PARTITIONS"
    print(f"{len(topics)} KafkaTopics, {partitions} partitions, replicas 3, min.insync.replicas 2")


def test_kafka_users_are_the_acl_plan_of_the_registries() -> None:
    """KafkaUsers (SCRAM-SHA-512) carry exactly the bindings `hub acl sync` would create."""
    plan = plan_acls(
        sources=[s["id"] for s in SOURCES], recipients=[(r["id"], r["kafka_principal"]) for r in RECIPIENTS]
    )
    users = {u["metadata"]["name"]: u for u in of_kind("KafkaUser")}
    assert set(users) == {p.user for p in plan.principals}
    for principal in plan.principals:
        spec = users[principal.user]["spec"]
        assert spec["authentication"] == {"type": "scram-sha-512"}
        got = set()
        for acl in spec["authorization"]["acls"]:
            resource = acl["resource"]
            pattern = Pattern.PREFIXED if resource.get("patternType") == "prefix" else Pattern.LITERAL
            name = resource.get("name", "kafka-cluster")
            for operation in acl["operations"]:
                op = re.sub(r"(?<!^)([A-Z])", r"_\1", operation).upper()
                kind = {"transactionalId": Resource.TRANSACTIONAL_ID}.get(resource["type"])
                got.add((kind or Resource(resource["type"].upper()), pattern, name, op))
        wanted = {
            (b.resource, b.pattern, b.name, b.operation)
            for b in plan.bindings
            if b.principal == principal.name
        }
        assert got == wanted, principal.user


def test_a_source_writes_the_ingest_topic_and_reads_its_own_receipts_only() -> None:
    """The security issue's rule, read straight from the manifests (not through the plan): a source
    writes the ingest topic, reads its own receipt topic in its own groups, and nothing else; a
    recipient reads its own topic only."""
    users = {u["metadata"]["name"]: u["spec"]["authorization"]["acls"] for u in of_kind("KafkaUser")}
    for source in SOURCES:
        user = source_user(source["id"])
        acls = users[user]
        assert sorted((a["resource"]["type"], a["resource"]["name"], a["resource"]["patternType"],
                       tuple(sorted(a["operations"]))) for a in acls) == [
            ("group", user, "literal", ("Describe", "Read")),
            ("group", user + ".", "prefix", ("Describe", "Read")),
            ("topic", INGEST, "literal", ("Describe", "Write")),
            ("topic", source_receipts(source["id"]), "literal", ("Describe", "Read")),
        ]  # fmt: skip
    for recipient in RECIPIENTS:
        acls = users[recipient_user(recipient["kafka_principal"])]
        topics = {a["resource"]["name"] for a in acls if a["resource"]["type"] == "topic"}
        groups = {a["resource"]["name"] for a in acls if a["resource"]["type"] == "group"}
        assert topics == {recipient_pathway(recipient["id"])}
        assert all(
            a["resource"]["patternType"] == "literal" for a in acls if a["resource"]["type"] == "topic"
        )
        assert groups == {recipient["id"], recipient["id"] + "."}
        assert all("Write" not in a["operations"] for a in acls)


def test_the_committed_topics_and_users_are_what_render_writes() -> None:
    """deploy/k8s/kafka/{topics,users}.yaml are up to date with the registries (run render.py)."""
    from deploy.k8s.render import render  # noqa: PLC0415 - a script, imported only here

    for path, text in render(
        ROOT / "config" / "sources.demo.json", ROOT / "config" / "recipients.demo.json"
    ).items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run deploy/k8s/render.py"


def hub_environments() -> list[dict[str, str]]:
    """Every HUB_* environment the deployments give a hub process (compose and Kubernetes)."""
    found = []
    for name, service in compose()["services"].items():
        if name.startswith(("kafka-", "prometheus", "grafana")):
            continue
        found.append({k: str(v) for k, v in service["environment"].items()})
    config_maps = {c["metadata"]["name"]: c["data"] for c in of_kind("ConfigMap")}
    for deployment in of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env: dict[str, str] = {}
            for source in container.get("envFrom", ()):
                env |= config_maps[source["configMapRef"]["name"]]
            for variable in container.get("env", ()):
                assert "valueFrom" not in variable or "secretKeyRef" not in variable["valueFrom"], (
                    "secrets are mounted as files, not put in the environment"
                )
                env[variable["name"]] = str(variable.get("value", ""))
            found.append(env)
    return found


def test_every_hub_variable_is_a_setting_and_no_secret_is_a_value() -> None:
    """HUB_* names match hub/settings.py; a key, password or token is only ever a *_FILE path."""
    known = settings_variables()
    environments = hub_environments()
    assert len(environments) >= 6
    for env in environments:
        hub_names = {name for name in env if name.startswith("HUB_")}
        assert hub_names <= known, f"not settings: {sorted(hub_names - known)}"
        assert not {n for n in hub_names if SECRET_SETTINGS.match(n)}, "a secret given as a value"
        for name in hub_names:
            if name.endswith("_FILE"):
                assert env[name].startswith("/"), f"{name} must be an absolute path in the container"
    print(
        f"{len(environments)} hub process environments, "
        f"{len(set().union(*environments))} variables, all settings"
    )


def test_secrets_are_referenced_never_embedded() -> None:
    """No Secret is committed; each Secret the pods mount is one DEPLOY.md tells the region to create."""
    assert of_kind("Secret") == []
    text = "\n".join(p.read_text() for p in k8s_files())
    assert not re.search(r"(?i)password:\s*\S", text), "a password in a manifest"
    docs = (ROOT / "docs" / "DEPLOY.md").read_text()
    users = {u["metadata"]["name"] for u in of_kind("KafkaUser")}
    for deployment in of_kind("Deployment"):
        for volume in deployment["spec"]["template"]["spec"]["volumes"]:
            name = volume.get("secret", {}).get("secretName")
            if name is None or name in users:  # Strimzi's User Operator writes those
                continue
            assert f"`{name}`" in docs, f"docs/DEPLOY.md must say how to create Secret {name}"


def test_pods_run_as_non_root_with_pinned_images_and_a_budget() -> None:
    """Restricted pod security, a pinned image, and a PodDisruptionBudget for every Deployment."""
    budgets = [p["spec"]["selector"]["matchLabels"] for p in of_kind("PodDisruptionBudget")]
    for deployment in of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert not container["image"].endswith(":latest") and ":" in container["image"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert container["args"][0] == "hub"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(b.items() <= labels.items() for b in budgets), deployment["metadata"]["name"]
    for service in compose()["services"].values():
        assert ":" in service["image"] and not service["image"].endswith(":latest")


def test_the_kafka_cluster_is_kraft_with_three_voters_in_both_deployments() -> None:
    """Strimzi: a three-node dual-role pool; compose: three nodes with one quorum and replication 3."""
    (pool,) = of_kind("KafkaNodePool")
    assert pool["spec"]["replicas"] == 3 and set(pool["spec"]["roles"]) == {"controller", "broker"}
    (kafka,) = of_kind("Kafka")
    config = kafka["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] == 2 and config["allow.everyone.if.no.acl.found"] is False
    assert all(
        listener["authentication"]["type"] == "scram-sha-512"
        for listener in kafka["spec"]["kafka"]["listeners"]
    )
    brokers = {n: s for n, s in compose()["services"].items() if n.startswith("kafka-")}
    assert len(brokers) == 3
    voters = {s["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for s in brokers.values()}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert {s["environment"]["KAFKA_NODE_ID"] for s in brokers.values()} == {"1", "2", "3"}
    assert {s["image"] for s in brokers.values()} == {"apache/kafka:4.4.0"}
    assert {s["environment"]["KAFKA_MIN_INSYNC_REPLICAS"] for s in brokers.values()} == {"2"}


def test_the_image_runs_as_a_non_root_user() -> None:
    """deploy/image/Containerfile: pinned bases, a numeric non-root USER, a hub command, files that exist."""
    lines = [line.strip() for line in (DEPLOY / "image" / "Containerfile").read_text().splitlines()]
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert bases and all(":" in base and not base.endswith(":latest") for base in bases)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert any(line.startswith('CMD ["hub"') for line in lines)
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_dashboards_and_alert_rules_use_metrics_the_hub_exports() -> None:
    """Every hub_* series in the Grafana dashboard and the Prometheus rules exists in hub/metrics.py."""
    exported = {metric.name for metric in REGISTRY.collect()} | {"hub_gateway_alerts"}
    texts = [
        (DEPLOY / "compose" / "grafana" / "dashboards" / "hub.json").read_text(),
        (DEPLOY / "compose" / "prometheus" / "alerts.yml").read_text(),
    ]
    used = {m for text in texts for m in re.findall(r"\bhub_[a-z_]+", text)}
    assert used
    for metric in used:
        base = re.sub(r"_(total|bucket|sum|count|created)$", "", metric)
        assert base in exported, f"{metric} is not a metric of hub/metrics.py"
    json.loads(texts[0])
