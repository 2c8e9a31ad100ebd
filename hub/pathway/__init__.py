"""The unified patient pathway: its event envelope, deterministic event ids and network patient ids.

:mod:`.event` is the envelope of ``hub.pathway.v1``; :mod:`.network_id` the pseudonymous network
patient id that keys every pathway topic (ingest computes it, the identity stage links ids, consent,
networks, crypto and the key service read it).
"""
