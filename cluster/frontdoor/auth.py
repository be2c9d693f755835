"""Bearer-token checks shared by every door: gRPC, Serve's gRPC ingress and HTTP, /metrics."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from tandem.cluster.transport.messages import RequestError


def authorized(authorization: Sequence[str], token: str | None) -> bool:
    """Whether the `authorization` header/metadata values carry the bearer token (always true
    when no token is configured). Exactly one value is accepted: with two, which one counts
    would depend on the proxy. Values are compared as SHA-256 digests in constant time, so
    neither the token nor its length leaks; any text (non-ASCII included) is just wrong."""
    if token is None:
        return True
    if len(authorization) != 1:
        return False
    scheme, _, value = authorization[0].partition(" ")
    given = hashlib.sha256(value.strip().encode("utf-8", "surrogatepass")).digest()
    expected = hashlib.sha256(token.encode("utf-8")).digest()
    return scheme.lower() == "bearer" and hmac.compare_digest(given, expected)


def unauthenticated() -> RequestError:
    return RequestError("UNAUTHENTICATED", "missing or wrong bearer token (Authorization)")
