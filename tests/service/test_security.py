"""TLS, mutual TLS and bearer-token auth on the real gRPC server, with certificates made here:
secured calls work; plaintext, certificate-less and token-less calls fail; health stays open."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.client import Credentials, TandemClient
from tests.support.services import free_port, start_service
from tests.support.tls_certs import make_certificates

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "tandem-test-token"


@pytest.fixture(scope="module")
def certs():
    return make_certificates()


def _config(tmp_path, certs, mutual: bool) -> dict:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    tls = certs.write(tmp_path)
    if not mutual:
        del tls["client_ca"]
    return {
        "server": {"tls": tls, "auth": {"token_file": str(token_file)}},
        "speculation": {"enabled": False},  # one target is all these checks need
        "ray": {"num_cpus": 1},
    }


@pytest.fixture(scope="module")
def metrics_port():
    return free_port()


@pytest.fixture(scope="module")
def servers(tmp_path_factory, certs, metrics_port):
    """The mutual-TLS server and the server-TLS-only one, started (and stopped) side by side:
    each is one target on one core, and a start keeps mostly one core busy."""
    mutual = _config(tmp_path_factory.mktemp("mtls"), certs, mutual=True)
    mutual["server"].update(metrics_port=metrics_port, metrics_auth=True)
    own = start_service(mutual)
    server_only = start_service(_config(tmp_path_factory.mktemp("tls"), certs, mutual=False))
    with ThreadPoolExecutor(1) as pool:
        try:
            starting = pool.submit(next, server_only)
            yield {"mtls": next(own), "tls": starting.result()}
        finally:
            stopping = pool.submit(server_only.close)
            own.close()
            stopping.result()


@pytest.fixture(scope="module")
def mtls_service(servers):
    return servers["mtls"]


def _health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="tandem.v1.Tandem")
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def _fails(client: TandemClient) -> grpc.StatusCode:
    with client, pytest.raises(grpc.RpcError) as exc:
        client.generate("Hi", max_tokens=4, temperature=0)
    return exc.value.code()


def test_mutual_tls_with_token(mtls_service, certs):
    address = mtls_service.address
    mutual = Credentials(certs.ca.cert, certs.client.cert, certs.client.key)
    with TandemClient(address, timeout=60, tls=mutual, token=TOKEN) as client:
        result = client.generate("Hi", max_tokens=4, temperature=0)
        assert result.usage.completion_tokens == 4
        assert client.stats().requests_finished == 1
    # The token is checked on every RPC, streaming ones included.
    assert _fails(TandemClient(address, tls=mutual, timeout=300)) == grpc.StatusCode.UNAUTHENTICATED
    assert _fails(TandemClient(address, tls=mutual, token="nope", timeout=300)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    with (
        TandemClient(address, tls=mutual, timeout=300) as client,
        pytest.raises(grpc.RpcError) as exc,
    ):
        list(client.stream("Hi", max_tokens=4))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Health needs no token (orchestrators probe it), but still the client certificate.
    channel = grpc.secure_channel(address, mutual.channel_credentials())
    assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    channel.close()
    # No client certificate, or no TLS at all: the handshake fails before any RPC.
    server_only = Credentials(certs.ca.cert)
    assert _fails(TandemClient(address, tls=server_only, token=TOKEN, timeout=300)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    assert _fails(TandemClient(address, token=TOKEN, timeout=300)) == grpc.StatusCode.UNAVAILABLE


def test_cli_with_mutual_tls_and_token(mtls_service, certs, tmp_path):
    """`tandem generate` reaches a secured server with --tls-* files and --token-env."""
    paths = {}
    for name, data in (
        ("ca", certs.ca.cert),
        ("cert", certs.client.cert),
        ("key", certs.client.key),
    ):
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(data)
    command = [sys.executable, "-m", "tandem.cli", "generate", "Hi", "--max-tokens", "3"]
    command += ["--address", mtls_service.address, "--temperature", "0", "--json"]
    command += ["--tls-ca", str(paths["ca"]), "--tls-cert", str(paths["cert"])]
    command += ["--tls-key", str(paths["key"]), "--token-env", "TANDEM_TEST_TOKEN"]
    env = {**os.environ, "TANDEM_TEST_TOKEN": TOKEN}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["usage"]["completion_tokens"] == 3
    env.pop("TANDEM_TEST_TOKEN")
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr


def test_tls_without_client_certificates(servers, certs):
    service = servers["tls"]
    server_only = Credentials(certs.ca.cert)
    with TandemClient(service.address, timeout=60, tls=server_only, token=TOKEN) as client:
        assert client.generate("Hi", max_tokens=3, temperature=0).usage.completion_tokens == 3
    assert _fails(TandemClient(service.address, tls=server_only, timeout=300)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    channel = grpc.secure_channel(service.address, server_only.channel_credentials())
    assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    channel.close()
    assert (
        _fails(TandemClient(service.address, token=TOKEN, timeout=300))
        == grpc.StatusCode.UNAVAILABLE
    )
    # A certificate from another CA is not trusted.
    stranger = Credentials(make_certificates().ca.cert)
    assert _fails(TandemClient(service.address, tls=stranger, token=TOKEN, timeout=300)) == (
        grpc.StatusCode.UNAVAILABLE
    )


def test_auth_details(mtls_service, certs, metrics_port):
    """Without the token every method is refused alike, unknown ones too (names cannot be
    probed); two authorization headers are refused even when one is right; /metrics asks for
    the token (server.metrics_auth), and a non-ASCII value is just a wrong one. (gRPC clients
    cannot send non-ASCII metadata; HTTP clients can.)"""
    mutual = Credentials(certs.ca.cert, certs.client.cert, certs.client.key)
    channel = grpc.secure_channel(mtls_service.address, mutual.channel_credentials())
    good = ("authorization", f"Bearer {TOKEN}")

    def code(method: str, metadata=()) -> grpc.StatusCode:
        call = channel.unary_unary(method)
        with pytest.raises(grpc.RpcError) as exc:
            call(b"", metadata=metadata, timeout=60)
        return exc.value.code()

    assert code("/tandem.v1.Tandem/NoSuchMethod") == grpc.StatusCode.UNAUTHENTICATED
    assert code("/no.such.Service/Method") == grpc.StatusCode.UNAUTHENTICATED
    assert code("/tandem.v1.Tandem/NoSuchMethod", [good]) == grpc.StatusCode.UNIMPLEMENTED
    twice = [good, ("authorization", "Bearer nope")]
    assert code("/tandem.v1.Tandem/GetStats", twice) == grpc.StatusCode.UNAUTHENTICATED
    assert code("/tandem.v1.Tandem/GetStats", [good, good]) == grpc.StatusCode.UNAUTHENTICATED
    channel.close()

    url = f"http://127.0.0.1:{metrics_port}/metrics"
    for headers in ({}, {"Authorization": b"Bearer t\xc3\xa9st"}, {"Authorization": "Bearer x"}):
        assert httpx.get(url, headers=headers, timeout=60).status_code == 401, headers
    scraped = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert scraped.status_code == 200 and "tandem_requests_total" in scraped.text


def test_https_takes_the_same_tls_and_token_as_grpc(servers, certs, tmp_path):
    """The OpenAI API of `tandem serve` is served with the gRPC port's TLS: HTTPS only, the
    client certificate where the CA is set, the bearer token on every route but /health, and
    /metrics with the token (server.metrics_auth) as on the metrics port."""
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    for path, data in ((ca, certs.ca.cert), (cert, certs.client.cert), (key, certs.client.key)):
        path.write_bytes(data)
    trusting = ssl.create_default_context(cafile=str(ca))
    with_certificate = ssl.create_default_context(cafile=str(ca))
    with_certificate.load_cert_chain(str(cert), str(key))
    body = {"prompt": "Hi", "max_tokens": 3, "temperature": 0}
    token = {"Authorization": f"Bearer {TOKEN}"}
    url = servers["mtls"].http_url
    assert url.startswith("https://")
    with httpx.Client(base_url=url, verify=with_certificate, timeout=60) as mutual:
        done = mutual.post("/v1/completions", json=body, headers=token)
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 3
        assert mutual.post("/v1/completions", json=body).status_code == 401
        assert mutual.get("/v1/models", headers={"Authorization": "Bearer x"}).status_code == 401
        assert mutual.get("/health").json() == {"status": "ok"}
        assert mutual.get("/metrics").status_code == 401
        assert "tandem_requests_total" in mutual.get("/metrics", headers=token).text
    # Without a client certificate, or without TLS, the connection fails before HTTP.
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", verify=trusting, timeout=60)
    with pytest.raises(httpx.TransportError):
        httpx.get(url.replace("https://", "http://") + "/health", timeout=60)
    # Server TLS only: the CA is all a client needs, besides the token.
    with httpx.Client(base_url=servers["tls"].http_url, verify=trusting, timeout=60) as plain:
        assert plain.post("/v1/completions", json=body, headers=token).status_code == 200
        assert plain.post("/v1/completions", json=body).status_code == 401
