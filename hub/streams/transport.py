"""faust's aiokafka transport with an idempotent, ``acks=all`` producer (DESIGN.md section 4).

faust only turns idempotence on inside transactions (``exactly_once``), which the hub does not use;
without it a retried send can duplicate or reorder a patient's events. Registered as the
``hubkafka://`` broker scheme through the ``faust.transports`` entry point in pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka


class IdempotentProducer(faust_aiokafka.Producer):
    """Every send waits for all in-sync replicas and carries a producer sequence number."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport, with the idempotent producer."""

    Producer = IdempotentProducer
