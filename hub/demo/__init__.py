"""The project's own synthetic demo feed: invented French patients as the demo sources publish them."""

from hub.demo.generator import (
    DEMO_SOURCES,
    DemoMessage,
    DemoSource,
    generate_feed,
    write_feed,
)
from hub.demo.identifiers import fr_nir_key

__all__ = ["DEMO_SOURCES", "DemoMessage", "DemoSource", "fr_nir_key", "generate_feed", "write_feed"]
