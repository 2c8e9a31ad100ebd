"""hub: an event-driven integration hub for shared medical records on Apache Kafka."""

__version__ = "0.1.0"
