"""The gRPC shell's own rules, over a scripted API (no engine): a failure that is not the
client's is INTERNAL with a short message and an error id, its details (traceback, paths, hosts)
in the log only; a message that does not parse is INVALID_ARGUMENT, never UNKNOWN."""

from __future__ import annotations

import asyncio
import logging
import re

import grpc
import pytest

from tandem.cluster.frontdoor.grpc_server import MalformedRequests, TandemServicer
from tandem.protos import tandem_pb2 as pb
from tandem.protos import tandem_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)

LEAK = "at /srv/tandem/secret.py on node 10.1.2.3, actor 9f0e"


class FailingAPI:
    """An API whose calls fail the way a dead actor or a bug would."""

    async def generate(self, request):
        if request.text == "ok":
            return pb.GenerateResponse(request_id="fine")
        raise RuntimeError(f"boom {LEAK}")

    async def generate_stream(self, request):
        yield pb.GenerateResponse(token_ids=[1])
        raise RuntimeError(f"boom {LEAK}")

    def abort(self, request):
        raise KeyError(LEAK)

    def model_info(self):
        return pb.ModelInfo(model="m")

    async def stats(self):
        raise RuntimeError(f"boom {LEAK}")


async def with_server(scenario):
    server = grpc.aio.server(interceptors=[MalformedRequests()])
    pb_grpc.add_TandemServicer_to_server(TandemServicer(FailingAPI()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await scenario(channel, pb_grpc.TandemStub(channel))
    finally:
        await server.stop(grace=None)


def test_internal_errors_are_short_and_logged_with_their_id(caplog):
    async def scenario(channel, stub):
        errors = []
        for call in (
            lambda: stub.GetStats(pb.GetStatsRequest(), timeout=30),
            lambda: stub.Generate(pb.GenerateRequest(text="x"), timeout=30),
            lambda: stub.Abort(pb.AbortRequest(request_id="r"), timeout=30),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call()
            errors.append(info.value)
        stream = stub.GenerateStream(pb.GenerateRequest(text="x"), timeout=30)
        assert list((await stream.read()).token_ids) == [1]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.read()
        errors.append(info.value)
        assert (await stub.Generate(pb.GenerateRequest(text="ok"), timeout=30)).request_id
        return errors

    with caplog.at_level(logging.ERROR, logger="tandem"):
        errors = asyncio.run(with_server(scenario))
    for error in errors:
        assert error.code() == grpc.StatusCode.INTERNAL
        details = error.details()
        assert "secret" not in details and "10.1.2.3" not in details and "boom" not in details
        error_id = re.search(r"\(error ([0-9a-f]{12})\)$", details).group(1)
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert logged and LEAK in logged[0].exc_text  # the details, for the operator


def test_messages_that_do_not_parse_are_invalid_argument():
    async def scenario(channel, stub):
        codes = []
        for method in ("Generate", "GenerateStream"):
            path = f"/tandem.v1.Tandem/{method}"
            call = (channel.unary_stream if method == "GenerateStream" else channel.unary_unary)(
                path
            )
            for payload in (b"\x0a\xff", b"\x0a\x02\xc3\x28"):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    response = call(payload, timeout=30)
                    if method == "GenerateStream":
                        await response.read()
                    else:
                        await response
                codes.append((info.value.code(), info.value.details()))
        return codes

    for code, details in asyncio.run(with_server(scenario)):
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a valid message of /tandem.v1.Tandem/" in details


def test_a_busy_http_port_is_a_config_error_naming_the_key():
    """The HTTP door binds its socket before anything else of it starts: a port in use is a
    ConfigError naming server.http_port (`tandem serve` prints it and exits 2), not uvicorn
    exiting the process."""
    import socket
    from types import SimpleNamespace

    from tandem.cluster.config.deployment import TandemConfig
    from tandem.cluster.config.errors import ConfigError
    from tandem.cluster.frontdoor.http_server import HTTPServer

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = TandemConfig().with_overrides(server={"http_port": port})
        with pytest.raises(ConfigError, match=f"server.http_port: cannot bind 127.0.0.1:{port}"):
            HTTPServer(SimpleNamespace(config=config), metrics=None)  # only its config is read
