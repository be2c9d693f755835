"""Python clients for tandem's gRPC API, synchronous and asyncio.

    from tandem.client import TandemClient
    with TandemClient("127.0.0.1:50051") as client:
        result = client.generate("Write a haiku about Ray.", max_tokens=64, temperature=0)
        print(result.text)

A prompt is a string (one user chat message, or raw text with chat=False), a list of token ids,
or a list of {"role", "content"} chat messages.

Secured servers: `token=` sends the bearer token; `tls=Credentials(...)` (PEM bytes) uses TLS, with
a client certificate for mutual TLS:

    tls = Credentials(root_certificates=ca_pem, certificate_chain=cert_pem, private_key=key_pem)
    TandemClient("host:50051", tls=tls, token=os.environ["TANDEM_TOKEN"])
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tandem.protos import tandem_pb2 as pb
from tandem.protos import tandem_pb2_grpc as pb_grpc
from tandem.protos.modes import proto_mode

Prompt = str | Sequence[int] | Sequence[dict[str, str]]


def build_request(
    prompt: Prompt,
    *,
    chat: bool = True,
    request_id: str = "",
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    speculation: str | None = None,
    num_speculative_tokens: int | None = None,
    pipelined: bool | None = None,
    **sampling_fields: Any,
) -> pb.GenerateRequest:
    """A GenerateRequest from Python values; unset fields take the server's defaults.

    `speculation` is a mode name (tandem.speculation.protocol.Mode: off, ngram, ...). Any other
    keyword is a SamplingParams field (presence_penalty, logprobs, logit_bias={id: bias},
    structured_outputs={"json": schema} or {"choice": [...]}, ...)."""
    sampling = pb.SamplingParams(
        stop=list(stop), stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos
    )
    fields = dict(
        temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, max_tokens=max_tokens
    )
    for name, value in {**fields, **sampling_fields}.items():
        if value is None:
            continue
        if name == "logit_bias":
            sampling.logit_bias.update(value)
        elif name == "structured_outputs":
            sampling.structured_outputs.CopyFrom(structured_outputs(**value))
        else:
            setattr(sampling, name, value)
    request = pb.GenerateRequest(sampling=sampling, request_id=request_id)
    if speculation is not None:
        request.speculation.mode = proto_mode(speculation)
    if num_speculative_tokens is not None:
        request.speculation.num_speculative_tokens = num_speculative_tokens
    if pipelined is not None:
        request.speculation.pipelined = pipelined
    if isinstance(prompt, str):
        if chat:
            request.chat.messages.add(role="user", content=prompt)
        else:
            request.text = prompt
    elif prompt and isinstance(prompt[0], dict):
        request.chat.messages.extend(pb.ChatMessage(**m) for m in prompt)
    else:
        request.token_ids.ids.extend(prompt)
    return request


def structured_outputs(**constraint: Any) -> pb.StructuredOutputs:
    """One constraint, as vLLM's StructuredOutputsParams takes it: json (a schema, as a dict or
    JSON text), json_object=True, regex, choice (a list of strings) or grammar."""
    out = pb.StructuredOutputs()
    for kind, value in constraint.items():
        if kind == "json" and not isinstance(value, str):
            value = json.dumps(value)
        if kind == "choice":
            out.choice.values.extend(value)
        else:
            setattr(out, kind, value)
    return out


@dataclass(frozen=True)
class Credentials:
    """TLS settings of a client, as PEM bytes. root_certificates: the CA that signed the server
    (None: the system's); certificate_chain and private_key: the client's, for mutual TLS."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    # Per-call metadata rather than call credentials: it also works over plaintext channels
    # (a Serve gRPC ingress behind a TLS-terminating load balancer).
    return (("authorization", f"Bearer {token}"),) if token else ()


def _channel(kind: Any, address: str, tls: Credentials | None) -> Any:
    """A channel from `kind` (grpc or grpc.aio): plaintext, or TLS with these credentials."""
    if tls is None:
        return kind.insecure_channel(address)
    return kind.secure_channel(address, tls.channel_credentials())


class TandemClient:
    """Blocking client. Keyword arguments of generate/stream are those of build_request;
    `timeout` (seconds) is the deadline of every call (None: no deadline)."""

    def __init__(
        self,
        address: str,
        timeout: float | None = None,
        *,
        tls: Credentials | None = None,
        token: str | None = None,
    ) -> None:
        self.channel = _channel(grpc, address, tls)
        self.stub = pb_grpc.TandemStub(self.channel)
        self.timeout = timeout
        self.metadata = _metadata(token)

    def generate(self, prompt: Prompt, **kwargs: Any) -> pb.GenerateResponse:
        request = build_request(prompt, **kwargs)
        return self.stub.Generate(request, timeout=self.timeout, metadata=self.metadata)

    def stream(self, prompt: Prompt, **kwargs: Any) -> Iterator[pb.GenerateResponse]:
        request = build_request(prompt, **kwargs)
        yield from self.stub.GenerateStream(request, timeout=self.timeout, metadata=self.metadata)

    def abort(self, request_id: str) -> bool:
        request = pb.AbortRequest(request_id=request_id)
        return self.stub.Abort(request, timeout=self.timeout, metadata=self.metadata).found

    def model_info(self) -> pb.ModelInfo:
        request = pb.GetModelInfoRequest()
        return self.stub.GetModelInfo(request, timeout=self.timeout, metadata=self.metadata)

    def stats(self) -> pb.Stats:
        request = pb.GetStatsRequest()
        return self.stub.GetStats(request, timeout=self.timeout, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> TandemClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTandemClient:
    """asyncio client with the same methods as TandemClient."""

    def __init__(
        self,
        address: str,
        timeout: float | None = None,
        *,
        tls: Credentials | None = None,
        token: str | None = None,
    ) -> None:
        self.channel = _channel(grpc.aio, address, tls)
        self.stub = pb_grpc.TandemStub(self.channel)
        self.timeout = timeout
        self.metadata = _metadata(token)

    async def generate(self, prompt: Prompt, **kwargs: Any) -> pb.GenerateResponse:
        request = build_request(prompt, **kwargs)
        return await self.stub.Generate(request, timeout=self.timeout, metadata=self.metadata)

    async def stream(self, prompt: Prompt, **kwargs: Any) -> AsyncIterator[pb.GenerateResponse]:
        request = build_request(prompt, **kwargs)
        call = self.stub.GenerateStream(request, timeout=self.timeout, metadata=self.metadata)
        async for response in call:
            yield response

    async def abort(self, request_id: str) -> bool:
        request = pb.AbortRequest(request_id=request_id)
        call = self.stub.Abort(request, timeout=self.timeout, metadata=self.metadata)
        return (await call).found

    async def model_info(self) -> pb.ModelInfo:
        request = pb.GetModelInfoRequest()
        return await self.stub.GetModelInfo(request, timeout=self.timeout, metadata=self.metadata)

    async def stats(self) -> pb.Stats:
        request = pb.GetStatsRequest()
        return await self.stub.GetStats(request, timeout=self.timeout, metadata=self.metadata)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncTandemClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
