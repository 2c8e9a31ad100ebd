"""Operator commands: trace, consent show, dlq, status, erase and sources check, over the layers below.

In the top layer (docs/LAYOUT.md): command-line code that may use any package below it. Modules::

    trace.py, consent_view.py, dlq.py, sources_check.py   pure: build what is printed
    cli.py         ``hub trace``, ``hub consent show``: read topics to their end, then print
    dlq_cli.py     ``hub dlq list|replay``
    status.py      ``hub status``: the hub's health on one screen
    erase_cli.py   ``hub erase``: crypto-shredding (hub.crypto.erase), the gateway's alerts, the ingest purge
    sources_cli.py ``hub sources check``: a source's sample files through the real ingest core, without Kafka

Nothing here prints clinical content: kinds, ids, identifiers, codes, rules and reasons only (``hub
sources check --show-resources`` prints the normalised resources of the files it is given).
"""
