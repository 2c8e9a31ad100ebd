"""A three-broker (or N-broker) embedded Kafka cluster on loopback: ``hub broker start --nodes 3``.

Each node is an :class:`~hub.broker.embedded.EmbeddedBroker` running as a combined broker and
controller; the controllers form a static quorum (``controller.quorum.voters``), so any majority
keeps the cluster up. Topics get three replicas and ``min.insync.replicas=2``: with producers on
``acks=all``, an acknowledged record is on at least two brokers, and losing one broker loses nothing.

The cluster directory holds::

    cluster.json     the cluster id and every node's ports, chosen once: a restarted node must come
                     back where the other voters expect it
    node-<id>/       one broker directory per node (server.properties, kafka-logs/, broker.log, pid)
    tls/, credentials/   shared by every node when the cluster is secured (--secure)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from hub.broker.embedded import (
    DEFAULT_STOP_TIMEOUT,
    DEFAULT_WAIT_TIMEOUT,
    BrokerLayout,
    BrokerStatus,
    ClusterNode,
    EmbeddedBroker,
    Progress,
    _free_ports,
    random_cluster_id,
    read_pid_file,
    stderr_progress,
)
from hub.errors import BrokerError, ConfigError

CLUSTER_FILE = "cluster.json"
DEFAULT_NODES = 3
MAX_NODES = 9


def is_cluster(root: Path) -> bool:
    """True if ``root`` is a cluster directory (rather than a single broker's)."""
    return (root / CLUSTER_FILE).is_file()


@dataclass(frozen=True)
class ClusterSpec:
    """The cluster id and each node's fixed ports."""

    cluster_id: str
    nodes: tuple[ClusterNode, ...]

    @classmethod
    def new(cls, size: int, base_port: int) -> ClusterSpec:
        """Node i (from 1) serves clients on base+2(i-1), its quorum on the next port; base 0: free ports."""
        if not 1 <= size <= MAX_NODES:
            raise ConfigError(
                f"a cluster of {size} nodes is not supported", hint=f"use 1 to {MAX_NODES} nodes"
            )
        if base_port:
            ports = [base_port + offset for offset in range(2 * size)]
            if ports[-1] > 65535:
                raise ConfigError(f"ports {ports[0]}-{ports[-1]} do not fit", hint="choose a lower --port")
        else:
            ports = _free_ports(2 * size)
        voters = tuple((index + 1, ports[2 * index + 1]) for index in range(size))
        cluster_id = random_cluster_id()
        return cls(
            cluster_id,
            tuple(
                ClusterNode(index + 1, ports[2 * index], ports[2 * index + 1], voters, cluster_id)
                for index in range(size)
            ),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "cluster_id": self.cluster_id,
                "nodes": [
                    {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port}
                    for n in self.nodes
                ],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> ClusterSpec:
        raw = json.loads(text)
        voters = tuple((int(n["node_id"]), int(n["controller_port"])) for n in raw["nodes"])
        return cls(
            raw["cluster_id"],
            tuple(
                ClusterNode(
                    int(n["node_id"]), int(n["port"]), int(n["controller_port"]), voters, raw["cluster_id"]
                )
                for n in raw["nodes"]
            ),
        )

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)


class EmbeddedCluster:
    """Start, inspect, stop (and, for fault tests, kill) the nodes of one cluster directory."""

    def __init__(
        self,
        root: Path,
        jars_dir: Path,
        *,
        nodes: int | None = DEFAULT_NODES,
        port: int = 0,
        secure: bool = False,
        progress: Progress = stderr_progress,
    ) -> None:
        self.root = root.expanduser().resolve()
        self.jars_dir = jars_dir
        #: None: as many as the directory's cluster.json says (or DEFAULT_NODES for a new cluster).
        self.size = nodes
        self.port = port
        self.secure = secure
        self.progress = progress
        self._brokers: dict[int, EmbeddedBroker] = {}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def spec(self) -> ClusterSpec:
        """The cluster's spec, created (and written) on first use."""
        spec_file = self.root / CLUSTER_FILE
        if spec_file.is_file():
            spec = ClusterSpec.from_json(spec_file.read_text(encoding="utf-8"))
            if self.size is not None and len(spec.nodes) != self.size:
                raise BrokerError(
                    f"{self.root} holds a {len(spec.nodes)}-node cluster, not {self.size}",
                    hint=f"start it with --nodes {len(spec.nodes)}, or use another --data-dir",
                )
            return spec
        if (self.root / "kafka-logs").exists():
            raise BrokerError(
                f"{self.root} holds a single-node broker",
                hint="use another --data-dir for the cluster (or remove this one to start afresh)",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        spec = ClusterSpec.new(self.size or DEFAULT_NODES, self.port)
        partial = spec_file.with_name(f"{CLUSTER_FILE}.{os.getpid()}.partial")
        partial.write_text(spec.to_json(), encoding="utf-8")
        os.replace(partial, spec_file)
        return spec

    def layout(self, node_id: int) -> BrokerLayout:
        return BrokerLayout(
            root=self.root / f"node-{node_id}", jars_dir=self.jars_dir, secrets_root=self.root
        )

    def broker(self, node_id: int) -> EmbeddedBroker:
        """The :class:`EmbeddedBroker` of one node (the same object each call)."""
        if node_id not in self._brokers:
            node = next((n for n in self.spec().nodes if n.node_id == node_id), None)
            if node is None:
                raise BrokerError(f"the cluster in {self.root} has no node {node_id}")
            self._brokers[node_id] = EmbeddedBroker(
                self.layout(node_id), secure=self.secure, node=node, progress=self.progress
            )
        return self._brokers[node_id]

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated (what HUB_BOOTSTRAP_SERVERS takes)."""
        return self.spec().bootstrap

    def start(self, wait_timeout: float = DEFAULT_WAIT_TIMEOUT) -> str:
        """Launch every node not running, then wait until each answers; return the bootstrap list.

        All are launched before any wait: a node cannot finish starting until a quorum is up.
        """
        spec = self.spec()
        brokers = [self.broker(node.node_id) for node in spec.nodes]
        try:
            for broker in brokers:
                self.progress(
                    f"Starting Kafka node {broker.node.node_id if broker.node else '?'} of {len(brokers)}"
                )
                broker.launch()
            for broker in brokers:
                broker.start(wait_timeout)
        except BaseException:
            self.stop(timeout=10.0)
            raise
        return spec.bootstrap

    def start_node(self, node_id: int, wait_timeout: float = DEFAULT_WAIT_TIMEOUT) -> str:
        """(Re)start one node and wait until it answers; return its address."""
        return self.broker(node_id).start(wait_timeout)

    def kill_node(self, node_id: int) -> int:
        """SIGKILL one node's JVM, as a crash would; return its pid. For fault tests."""
        broker = self.broker(node_id)
        pid = read_pid_file(broker.layout)
        if pid is None:
            raise BrokerError(f"node {node_id} of {self.root} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if not broker._wait_for_exit(pid, 10.0):
            raise BrokerError(f"node {node_id} (pid {pid}) survived SIGKILL")
        broker.layout.pid_file.unlink(missing_ok=True)
        return pid

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> list[int]:
        """Stop every node (SIGTERM, SIGKILL after ``timeout``); return the pids stopped."""
        if not is_cluster(self.root):
            return []
        brokers = [self.broker(node.node_id) for node in self.spec().nodes]
        # All at once: stopped one after the other, the last node would wait for a quorum that is gone.
        with ThreadPoolExecutor(max_workers=len(brokers)) as pool:
            pids = list(pool.map(lambda broker: broker.stop(timeout=timeout), brokers))
        return [pid for pid in pids if pid is not None]

    def status(self) -> list[tuple[int, BrokerStatus]]:
        """(node id, status) of every node."""
        return [(node.node_id, self.broker(node.node_id).status()) for node in self.spec().nodes]


__all__ = ["CLUSTER_FILE", "DEFAULT_NODES", "ClusterSpec", "EmbeddedCluster", "is_cluster"]
