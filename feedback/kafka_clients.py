"""How alignloop's Kafka clients connect: bootstrap servers and TLS/SASL settings from the
configuration, the same for the gateway's producer and admin client and the trainer's consumer."""

from __future__ import annotations

from typing import Any

from core.config import FeedbackConfig


def connection_kwargs(config: FeedbackConfig) -> dict[str, Any]:
    """kafka-python keyword arguments for bootstrap and security."""
    # kafka-python backs off reconnects up to 30 s by default: after a broker restart, feedback
    # would sit in the spool that long. A second is plenty between attempts on a LAN.
    kwargs: dict[str, Any] = {
        "bootstrap_servers": config.kafka_bootstrap,
        "security_protocol": config.security_protocol,
        "reconnect_backoff_max_ms": 1000,
    }
    if config.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = config.sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = config.sasl_username
        kwargs["sasl_plain_password"] = (
            config.sasl_password.get_secret_value() if config.sasl_password else None
        )
    if config.security_protocol.endswith("SSL"):
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(config, key)
            if value is not None:
                kwargs[key] = str(value)
        kwargs["ssl_check_hostname"] = True
    return kwargs
