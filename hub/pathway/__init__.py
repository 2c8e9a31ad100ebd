"""The unified patient pathway: its event envelope and deterministic event ids."""
