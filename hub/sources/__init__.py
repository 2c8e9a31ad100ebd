"""The registry of sources allowed to publish, with their profiles and HMAC secrets."""

from hub.sources.registry import Source, SourceRegistry, load_sources

__all__ = ["Source", "SourceRegistry", "load_sources"]
