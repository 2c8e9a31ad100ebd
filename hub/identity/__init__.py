"""Patient identity: network patient ids from qualified INS or per-source local identifiers."""
