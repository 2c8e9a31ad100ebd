"""The project's own synthetic demo feed: invented French patients as the demo sources publish them."""

from hub.demo.generator import (
    DEMO_SOURCES,
    DemoMessage,
    DemoSource,
    Duplicate,
    LateIns,
    cross_source_duplicates,
    generate_feed,
    late_ins_cases,
    write_feed,
)
from hub.demo.identifiers import fr_nir_key

__all__ = [
    "DEMO_SOURCES",
    "DemoMessage",
    "DemoSource",
    "Duplicate",
    "LateIns",
    "cross_source_duplicates",
    "fr_nir_key",
    "generate_feed",
    "late_ins_cases",
    "write_feed",
]
