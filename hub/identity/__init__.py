"""Patient identity: the identity stage, which links local ids to a qualified INS and drops duplicates.

The network patient ids themselves (a keyed hash of an INS or a local identifier) are made by
:mod:`hub.pathway.network_id`, below ingest, which computes them first.
"""
