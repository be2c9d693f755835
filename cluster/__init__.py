"""The distributed service around the speculation core, in rooms by role.

- frontdoor/: what clients talk to (gRPC server, API, auth, request checks, Prometheus) and the
  coordinator that admits requests and routes them to target replicas.
- control/: bringing a deployment up: placement on Ray resources, bootstrap, `tandem plan`.
- actors/: the Ray actors, thin shells: the target replica (a vLLM engine) and the drafter replica.
- transport/: the data planes between actors: ZMQ sockets, the drafter channel, output channel.
- telemetry/: what tandem counts, read by GetStats, Prometheus and the bench.
- config/: the one typed deployment config (it composes tandem.speculation.settings).

Layers run top to bottom in that order; import-linter keeps them (pyproject.toml).
"""
