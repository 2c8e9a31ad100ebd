"""The operators' console: a web page of live charts over the workers' and gateway's metrics and the broker.

Modules::

    scrape.py  the workers' and gateway's /metrics: which answer, and their samples
    broker.py  what the broker says: reachability, topics, consumer lag, the latest rejects
    state.py   the console's picture (history, rates, the JSON the page draws), pure
    tokens.py  operator tokens, stored as SHA-256 hashes only
    app.py     the aiohttp application: page, /api/state, /metrics, operator access
    cli.py     ``hub console`` (serve) and ``hub console token issue|revoke|list``
    static/    the page: HTML, CSS and a script that draws SVG charts (no CDN, nothing remote)
"""
