"""Cluster security for a real Kafka cluster: TLS and SASL (PLAIN, SCRAM) settings turned
into the options aiokafka and faust take. Secrets only come from the settings object (which
reads them from the environment or ``PREFSTREAM_*_FILE`` files) and are never logged."""
from __future__ import annotations

import ssl
from typing import Any

from streams.settings import Settings, SettingsError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def check(settings: Settings) -> None:
    proto = settings.security_protocol.upper()
    if proto not in PROTOCOLS:
        raise SettingsError(f"PREFSTREAM_SECURITY_PROTOCOL={settings.security_protocol!r}: use one of {PROTOCOLS}")
    if proto.startswith("SASL"):
        mech = (settings.sasl_mechanism or "").upper()
        if mech not in MECHANISMS:
            raise SettingsError(f"{proto} needs PREFSTREAM_SASL_MECHANISM set to one of {MECHANISMS}")
        if not settings.sasl_username or not settings.sasl_password:
            raise SettingsError(f"{proto} needs PREFSTREAM_SASL_USERNAME and PREFSTREAM_SASL_PASSWORD "
                                "(or PREFSTREAM_SASL_PASSWORD_FILE)")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.security_protocol.upper().endswith("SSL"):
        return None
    ctx = ssl.create_default_context(cafile=settings.ssl_cafile)
    if settings.ssl_certfile:
        ctx.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile, password=settings.ssl_keyfile_password)
    return ctx


def kafka_options(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` plus the security options for any aiokafka client."""
    check(settings)
    proto = settings.security_protocol.upper()
    opts: dict[str, Any] = {"bootstrap_servers": settings.brokers, "security_protocol": proto}
    ctx = ssl_context(settings)
    if ctx is not None:
        opts["ssl_context"] = ctx
    if proto.startswith("SASL"):
        opts.update(sasl_mechanism=settings.sasl_mechanism.upper(), sasl_plain_username=settings.sasl_username,
                     sasl_plain_password=settings.sasl_password)
    return opts


def faust_credentials(settings: Settings):
    """What faust's ``broker_credentials`` takes, or None for PLAINTEXT."""
    import faust
    from faust.types.auth import SASLMechanism

    check(settings)
    proto = settings.security_protocol.upper()
    ctx = ssl_context(settings)
    if proto.startswith("SASL"):  # faust picks SASL_SSL when a context is given
        return faust.SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                                     ssl_context=ctx, mechanism=SASLMechanism(settings.sasl_mechanism.upper()))
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None
