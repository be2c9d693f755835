"""The Ray Serve application: the same coordinator, from the same tandem config, behind Serve's
gRPC ingress (tandem.v1.Tandem) and the OpenAI-compatible HTTP API of `tandem serve`.

One Serve replica owns one coordinator, which places the target and drafter pools itself; scale
with `target.replicas` and `speculation.drafters.replicas`, not with Serve replicas.

    serve run deploy/serve/local-cpu.yaml          # a local cluster, in the foreground
    serve deploy deploy/serve/local-cpu.yaml       # a running cluster (ray start / KubeRay)
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import FastAPI
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext

from tandem.cluster.config.cpus import keep_off
from tandem.cluster.config.deployment import TandemConfig
from tandem.cluster.frontdoor import openai_app
from tandem.cluster.frontdoor.api import TandemAPI
from tandem.cluster.frontdoor.auth import authorized, unauthenticated
from tandem.cluster.frontdoor.coordinator import Coordinator
from tandem.cluster.frontdoor.prometheus import start_metrics
from tandem.cluster.transport.messages import RequestError
from tandem.protos import tandem_pb2 as pb

GRPC_SERVICER_FUNCTION = "tandem.protos.tandem_pb2_grpc.add_TandemServicer_to_server"


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class TandemDeployment:
    """gRPC methods are named like tandem.v1.Tandem's RPCs (Serve's gRPC ingress calls them);
    HTTP is the OpenAI app of `tandem serve` (openai_app.py)."""

    def __init__(self, config: dict[str, Any]) -> None:
        # tandem's one-line records (refusals) reach the replica's log, where Serve keeps it.
        tandem_log = logging.getLogger("tandem")
        tandem_log.setLevel(logging.INFO)
        if not tandem_log.handlers and not logging.getLogger().handlers:
            tandem_log.addHandler(logging.StreamHandler())
        self.config = TandemConfig.from_dict(config)
        auth = self.config.server.auth
        self.token = auth.token() if auth else None
        keep_off(self.config.target.core_binding())  # this replica off the target engines' CPUs
        self.coordinator = Coordinator.start(self.config)
        self.api = TandemAPI(self.coordinator)
        self.metrics = start_metrics(self.coordinator)

    def __del__(self) -> None:
        """Serve calls this when the replica stops: free the pools' actors and bundles."""
        coordinator = getattr(self, "coordinator", None)  # None when __init__ failed
        if coordinator is not None:
            coordinator.shutdown()

    # ---- gRPC (Serve's gRPC ingress) ----------------------------------------------------------

    def _check(self, context: RayServegRPCContext) -> None:
        metadata = context.invocation_metadata()
        if not authorized([v for k, v in metadata if k == "authorization"], self.token):
            raise self.coordinator.reject(unauthenticated())

    @staticmethod
    def _refuse(context: RayServegRPCContext, exc: RequestError) -> None:
        """Serve's gRPC ingress answers with the status set here. Returning (not raising) keeps
        a refusal to the coordinator's one log line, not Serve's traceback."""
        context.set_code(grpc.StatusCode[exc.code])
        context.set_details(str(exc))

    async def _unary(self, context: RayServegRPCContext, call, refused: Any):
        """A unary RPC: `call()` (a value or an awaitable), or `refused` with the status set."""
        try:
            self._check(context)
            result = call()
            return await result if inspect.isawaitable(result) else result
        except RequestError as exc:
            self._refuse(context, exc)
            return refused

    async def Generate(self, request: pb.GenerateRequest, grpc_context: RayServegRPCContext):
        return await self._unary(
            grpc_context, lambda: self.api.generate(request), pb.GenerateResponse()
        )

    async def GenerateStream(
        self, request: pb.GenerateRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            self._check(grpc_context)
            async for response in self.api.generate_stream(request):
                yield response
        except RequestError as exc:
            # Serve applies the status with a message, so the stream ends with one empty
            # message before the status: that is how its ingress reports an error without a
            # traceback in the log.
            self._refuse(grpc_context, exc)
            yield pb.GenerateResponse()

    async def Abort(self, request: pb.AbortRequest, grpc_context: RayServegRPCContext):
        return await self._unary(grpc_context, lambda: self.api.abort(request), pb.AbortResponse())

    async def GetModelInfo(self, request, grpc_context: RayServegRPCContext):
        return await self._unary(grpc_context, self.api.model_info, pb.ModelInfo())

    async def GetStats(self, request, grpc_context: RayServegRPCContext):
        return await self._unary(grpc_context, self.api.stats, pb.Stats())

    # ---- OpenAI-compatible HTTP (cluster/frontdoor/openai_app.py) ---------------------------

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve asks for the HTTP app once the replica is built: the same app `tandem serve`
        runs, over this replica's coordinator."""
        return openai_app.build(self.coordinator, self.metrics)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve's entry point (`import_path: tandem.deploy.serve_app:app_builder`): the tandem
    config comes from the application's args (`config` inline, or `config_path`)."""
    config = TandemConfig.from_serve_args(args)
    if "http_port" in config.server.model_fields_set:
        logging.getLogger("tandem").warning(
            "server.http_port is tandem serve's: under Ray Serve, Serve's http_options place HTTP"
        )
    config.check_serving(exposed=True)  # Serve's gRPC ingress listens on every interface
    # The coordinator admits requests (server.max_inflight): Serve should not queue before it.
    deployment = TandemDeployment.options(max_ongoing_requests=config.server.max_inflight + 8)
    return deployment.bind(config.model_dump(mode="json"))
