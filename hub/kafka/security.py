"""How every hub client authenticates to Kafka: one :class:`KafkaSecurity`, rendered per client library.

The hub talks to Kafka through three libraries (kafka-python for the CLI and the admin client,
aiokafka for the gateway, faust over aiokafka for the workers). Each spells TLS and SASL options its
own way; this module is the only place that knows those spellings, so a process configured with
``HUB_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` (plus the CA file, user name and password file) is secured
in every client it opens.

``security=None`` in the client helpers means :func:`default_security`: built once per process from
the environment, exactly as :class:`hub.settings.Settings` would read it, so the many commands that
only know a bootstrap address are covered without threading a new argument through each of them.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import ConfigError, SecretUnavailable
from hub.settings import Settings

PLAINTEXT = "PLAINTEXT"
SASL_SSL = "SASL_SSL"
SCRAM_SHA_512 = "SCRAM-SHA-512"

_TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
_SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


@dataclass(frozen=True)
class KafkaSecurity:
    """Transport security and identity of one Kafka client; the password never appears in ``repr``."""

    protocol: str = PLAINTEXT
    #: PEM CA bundle that signed the broker's certificate; None trusts the system's CAs.
    ca_file: Path | None = None
    mechanism: str = SCRAM_SHA_512
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.uses_sasl and (not self.username or not self.password):
            raise ConfigError(
                f"Kafka security protocol {self.protocol} needs a SASL user name and password",
                hint="set HUB_KAFKA_SASL_USERNAME and HUB_KAFKA_SASL_PASSWORD_FILE "
                "(`hub acl sync` writes one password file per principal)",
            )

    @property
    def uses_tls(self) -> bool:
        return self.protocol in _TLS_PROTOCOLS

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in _SASL_PROTOCOLS

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaSecurity:
        """The security a process's settings describe; reads the password file, if any."""
        password: str | None = None
        if settings.kafka_sasl_password is not None:
            password = settings.kafka_sasl_password.get_secret_value()
        elif settings.kafka_sasl_password_file is not None:
            password = read_password_file(settings.kafka_sasl_password_file)
        return cls(
            protocol=settings.kafka_security_protocol,
            ca_file=settings.kafka_ssl_cafile,
            mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_sasl_username,
            password=password,
        )

    @classmethod
    def scram(cls, username: str, password: str, ca_file: Path) -> KafkaSecurity:
        """SASL/SCRAM-SHA-512 over TLS, as the secured embedded broker expects."""
        return cls(protocol=SASL_SSL, ca_file=ca_file, username=username, password=password)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context verifying the broker against ``ca_file`` (and its host name)."""
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the Kafka CA file {self.ca_file}: {type(exc).__name__}",
                hint="point HUB_KAFKA_SSL_CAFILE at the broker's ca.pem "
                "(`hub broker start --secure` prints it)",
            ) from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and admin client."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            # kafka-python builds its own context from these; host names are checked by default.
            options |= {"ssl_cafile": str(self.ca_file) if self.ca_file else None, "ssl_check_hostname": True}
        if self.uses_sasl:
            options |= {
                "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        return options

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's ``AIOKafkaProducer`` and ``AIOKafkaConsumer``."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options |= {
                "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        return options

    def faust_credentials(self) -> Any:
        """faust's ``broker_credentials`` (None on plaintext): faust passes them to every aiokafka client."""
        import faust  # noqa: PLC0415 - only worker processes import faust

        if self.uses_sasl:
            return faust.SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=self.ssl_context(),
                mechanism=self.mechanism,
            )
        if self.uses_tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


def read_password_file(path: Path) -> str:
    """A password from a file (surrounding white space ignored); never echoed in an error."""
    try:
        password = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretUnavailable(
            f"cannot read the Kafka password file {path}",
            hint="run `hub acl sync` (it writes the password files), or fix HUB_KAFKA_SASL_PASSWORD_FILE",
        ) from exc
    if not password:
        raise SecretUnavailable(f"the Kafka password file {path} is empty", hint="run `hub acl sync` again")
    return password


@functools.cache
def default_security() -> KafkaSecurity:
    """This process's security, from the environment (``HUB_KAFKA_*``), read once."""
    return KafkaSecurity.from_settings(Settings())


def resolve(security: KafkaSecurity | None) -> KafkaSecurity:
    """``security``, or the process default when None."""
    return security if security is not None else default_security()


__all__ = [
    "PLAINTEXT",
    "SASL_SSL",
    "SCRAM_SHA_512",
    "KafkaSecurity",
    "default_security",
    "read_password_file",
    "resolve",
]
