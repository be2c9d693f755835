"""The front door's section of the config: address, limits, metrics, TLS and token auth."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, model_validator

from tandem.cluster.config.errors import ConfigError
from tandem.speculation.settings import PositiveInt, Section


class TLSConfig(Section):
    """Server certificate and key (PEM files); with client_ca, clients must present a
    certificate signed by it (mutual TLS). Files are read when the server starts."""

    cert: Path
    key: Path
    client_ca: Path | None = None


class AuthConfig(Section):
    """Bearer-token auth. The token comes from a file or from an environment variable named
    here, so the YAML (and a KubeRay manifest) never holds the secret itself."""

    token_file: Path | None = None
    token_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AuthConfig:
        if (self.token_file is None) == (self.token_env is None):
            raise ValueError("set exactly one of token_file and token_env")
        return self

    def token(self) -> str:
        """The token, read now; refuses an empty or missing one rather than open the door."""
        if self.token_file is not None:
            try:
                value = self.token_file.expanduser().read_text().strip()
            except OSError as exc:
                raise ConfigError(f"server.auth.token_file: cannot read: {exc}") from None
            where = f"server.auth.token_file ({self.token_file})"
        else:
            value = os.environ.get(self.token_env, "").strip()
            where = f"server.auth.token_env (${self.token_env})"
        if not value:
            raise ConfigError(f"{where}: the token is empty or unset")
        return value


class ServerConfig(Section):
    """The front door (gRPC and OpenAI HTTP), its limits, metrics and security."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)  # gRPC; 0 picks a free port
    # `tandem serve`'s OpenAI HTTP API, on `host` beside gRPC with the same TLS and token; None:
    # off, 0: a free port. Under Ray Serve, Serve's http_options place HTTP instead.
    http_port: int | None = Field(8000, ge=0, le=65535)
    max_tokens: PositiveInt = 2048  # the largest max_tokens a request may ask for
    default_max_tokens: PositiveInt = 256
    max_inflight: PositiveInt = 64  # more requests at once get RESOURCE_EXHAUSTED
    # A request message larger than this is refused (RESOURCE_EXHAUSTED) before it is parsed.
    max_request_bytes: PositiveInt = 1 << 20
    # Threads that tokenize prompts and render chats, off the event loop: at most this many
    # requests are prepared at once, the rest wait (and count toward max_inflight).
    tokenizer_threads: PositiveInt = 2
    drain_timeout_s: float = Field(10.0, ge=0)  # SIGTERM waits this long for in-flight requests
    metrics_port: int | None = Field(None, ge=0, le=65535)  # Prometheus; None or 0: off
    metrics_host: str = "127.0.0.1"
    metrics_auth: bool = False  # /metrics asks for the bearer token of `auth` too
    tls: TLSConfig | None = None  # None: plaintext
    auth: AuthConfig | None = None  # None: no token needed
    # Serving a non-loopback address without auth is refused unless this says it is meant.
    allow_unauthenticated: bool = False

    @model_validator(mode="after")
    def _metrics_auth_has_a_token(self) -> ServerConfig:
        if self.metrics_auth and self.auth is None:
            raise ValueError("metrics_auth needs auth (the bearer token /metrics asks for)")
        return self

    @model_validator(mode="after")
    def _default_within_limit(self) -> ServerConfig:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds "
                f"max_tokens ({self.max_tokens})"
            )
        return self


def is_loopback(host: str) -> bool:
    """Whether a bind address only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
