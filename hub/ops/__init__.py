"""Operator tools: ``hub trace`` (where one input went) and ``hub consent show`` (what decides sharing).

The modules :mod:`hub.ops.trace` and :mod:`hub.ops.consent_view` are pure: they are given records
already read from Kafka and build what the commands print. :mod:`hub.ops.cli` reads the topics (to
their end offsets, without a consumer group) and prints. Nothing here prints clinical content: kinds,
ids, identifiers, codes, rules and reasons only.
"""
