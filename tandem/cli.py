"""The `tandem` command line: serve, plan, generate, models, bench, draft.

It sits above everything it drives (tandem.cluster for the service, tandem.benchmarks for the
bench, tandem.training for draft heads), so nothing below it imports upward.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tandem.cluster.config.deployment import TandemConfig
from tandem.cluster.config.errors import ConfigError
from tandem.cluster.control.placement import PlacementError
from tandem.models import ModelError
from tandem.training import TrainingError

DEFAULT_ADDRESS = "127.0.0.1:50051"
DESCRIPTION = """Speculative decoding with the drafter on hardware of its own: a vLLM target and
remote drafters on Ray, served over gRPC and an OpenAI-compatible HTTP API.

  tandem serve                      serve the default model (gRPC :50051, OpenAI HTTP :8000)
  tandem generate "Hello"           stream a completion from a running server
  tandem bench --quick              measure against vLLM on this machine"""


def load_config(path: str | None) -> TandemConfig:
    return TandemConfig.from_yaml(path) if path else TandemConfig()


def cmd_serve(args: argparse.Namespace) -> int:
    ports = {"host": args.host, "port": args.port, "http_port": args.http_port}
    config = load_config(args.config).with_overrides(server=ports)
    from tandem.cluster.frontdoor.service import announcer, run_service

    run_service(config, on_ready=announcer(config))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from tandem.cluster.control.preview import run_plan

    config = load_config(args.config)
    for line in run_plan(config, args.address or config.ray.address):
        print(line)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import grpc

    from tandem.client import TandemClient
    from tandem.cluster.frontdoor.api import FINISH_REASONS

    reasons = {v: (k or "unspecified") for k, v in FINISH_REASONS.items()}
    kwargs = dict(
        chat=not args.no_chat,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        speculation=args.speculation,
        num_speculative_tokens=args.num_speculative_tokens,
        pipelined=args.pipelined,
    )
    token_ids: list[int] = []
    text = []
    last = None
    try:
        with TandemClient(args.address, **client_security(args)) as client:
            for chunk in client.stream(args.prompt, **kwargs):
                token_ids += chunk.token_ids
                text.append(chunk.text)
                if not args.json:
                    print(chunk.text, end="", flush=True)
                last = chunk
    except grpc.RpcError as exc:
        print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if args.json:
        out = {
            "request_id": last.request_id,
            "token_ids": token_ids,
            "text": "".join(text),
            "finish_reason": reasons[last.finish_reason],
            "usage": {
                "prompt_tokens": last.usage.prompt_tokens,
                "completion_tokens": last.usage.completion_tokens,
                "total_tokens": last.usage.total_tokens,
            },
            "timings": {
                "time_to_first_token_s": last.timings.time_to_first_token_s,
                "time_per_output_token_s": last.timings.time_per_output_token_s,
                "total_s": last.timings.total_s,
            },
            "speculation": {
                "mode": last.speculation.mode,
                "draft_tokens": last.speculation.draft_tokens,
                "accepted_tokens": last.speculation.accepted_tokens,
                "acceptance_rate": last.speculation.acceptance_rate,
                "mean_accepted_length": last.speculation.mean_accepted_length,
                "target_steps": last.speculation.target_steps,
                "cache_hits": last.speculation.cache_hits,
                "cache_misses": last.speculation.cache_misses,
                "skipped_waits": last.speculation.skipped_waits,
                "sources": {
                    name: {
                        "draft_tokens": source.draft_tokens,
                        "accepted_tokens": source.accepted_tokens,
                        "acceptance_rate": source.acceptance_rate,
                    }
                    for name, source in last.speculation.sources.items()
                },
            },
        }
        print(json.dumps(out))
    else:
        print()
    return 0


def client_security(args: argparse.Namespace) -> dict:
    """TandemClient's tls/token arguments from --tls-* files and the --token-env variable."""
    import os

    from tandem.client import Credentials

    files = (args.tls_ca, args.tls_cert, args.tls_key)
    tls = None
    if any(files):
        ca, cert, key = (Path(f).read_bytes() if f else None for f in files)
        tls = Credentials(root_certificates=ca, certificate_chain=cert, private_key=key)
    return {"tls": tls, "token": os.environ.get(args.token_env) or None}


def cmd_models_prepare(args: argparse.Namespace) -> int:
    """The named built-in models; without names, what the config serves: its target and the
    draft its drafters use (what an image bakes in, and `make setup` prepares)."""
    from tandem.models import BUILTIN_MODELS, ModelStore, prepare_model

    config = load_config(args.config)
    models_dir = Path(args.dir) if args.dir else config.models.cache_dir()
    if args.names:
        for name in args.names:
            print(prepare_model(name, models_dir, force=args.force))
        return 0
    if args.force and config.models.target in BUILTIN_MODELS:
        prepare_model(config.models.target, models_dir, force=True)
    store = ModelStore(models_dir, config.models.source)
    print(store.resolve(config.models.target))
    drafters = config.speculation.drafters
    if config.speculation.enabled:
        draft = store.draft_for(config.models.target, drafters.model, drafters.derive_layers)
        if draft is not None:
            print(draft)
    return 0


def cmd_models_derive_draft(args: argparse.Namespace) -> int:
    from tandem.models import derive_draft, resolve_model

    config = load_config(args.config)
    models_dir = Path(args.dir) if args.dir else config.models.cache_dir()
    target = resolve_model(args.target or config.models.target, models_dir)
    print(derive_draft(target, args.layers, models_dir))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from tandem.models import BUILTIN_MODELS, list_models

    models_dir = Path(args.dir) if args.dir else load_config(args.config).models.cache_dir()
    prepared = {m.name: m for m in list_models(models_dir)}
    print(f"model cache: {models_dir}")
    for name in sorted(set(BUILTIN_MODELS) | set(prepared)):
        model = prepared.get(name)
        state = f"{model.size_bytes / 2**20:.0f} MiB  {model.path}" if model else "not prepared"
        print(f"  {name:32s} {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tandem.speculation.protocol import Mode

    parser = argparse.ArgumentParser(prog="tandem", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="start the service: gRPC and OpenAI HTTP (embedded Ray unless configured)"
    )
    serve.add_argument("--config", help="YAML config; the built-in default without it")
    serve.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (default from config: 50051; 0 = any)")
    serve.add_argument(
        "--http-port",
        type=int,
        help="OpenAI HTTP port (default from config: 8000; 0 = any; server.http_port: null = off)",
    )
    serve.set_defaults(func=cmd_serve)

    plan = sub.add_parser(
        "plan", help="show where each actor would go, or which resource is missing"
    )
    plan.add_argument("--config", help="YAML config; the built-in default without it")
    plan.add_argument("--address", help="Ray cluster to ask (default from config: ray.address)")
    plan.set_defaults(func=cmd_plan)

    gen = sub.add_parser("generate", help="stream a completion from a running server")
    gen.add_argument("prompt")
    gen.add_argument("--address", default=DEFAULT_ADDRESS)
    gen.add_argument("--max-tokens", type=int)
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--no-chat", action="store_true", help="send the prompt as raw text")
    gen.add_argument(
        "--speculation",
        choices=[m.value for m in Mode],
        help="drafter for this request (default: the server's speculation.default_mode)",
    )
    gen.add_argument("--num-speculative-tokens", type=int, help="draft length k per step")
    gen.add_argument(
        "--pipelined",
        action=argparse.BooleanOptionalAction,
        help="pre-draft while the target verifies (default: speculation.pipeline.enabled)",
    )
    gen.add_argument("--json", action="store_true", help="print one JSON object at the end")
    gen.add_argument("--tls-ca", help="PEM CA of the server's certificate: connect with TLS")
    gen.add_argument("--tls-cert", help="PEM client certificate, for mutual TLS")
    gen.add_argument("--tls-key", help="PEM client key, for mutual TLS")
    gen.add_argument(
        "--token-env",
        default="TANDEM_TOKEN",
        help="environment variable holding the bearer token (default: TANDEM_TOKEN)",
    )
    gen.set_defaults(func=cmd_generate)

    models = sub.add_parser("models", help="prepare and list models")
    msub = models.add_subparsers(dest="models_command", required=True)
    prep = msub.add_parser("prepare", help="turn a built-in GGUF model into a HF folder")
    prep.add_argument(
        "names", nargs="*", help="built-in models (default: the config's target and draft)"
    )
    prep.add_argument("--force", action="store_true", help="prepare again even if present")
    lst = msub.add_parser("list", help="show built-in and prepared models")
    derive = msub.add_parser(
        "derive-draft", help="make a draft model from a target's first N layers"
    )
    derive.add_argument("--layers", type=int, required=True, help="layers to keep")
    derive.add_argument("--target", help="target model (default: the config's models.target)")
    for p, func in (
        (prep, cmd_models_prepare),
        (lst, cmd_models_list),
        (derive, cmd_models_derive_draft),
    ):
        p.add_argument("--config", help="YAML config whose models.dir to use")
        p.add_argument("--dir", help="model cache folder (overrides the config)")
        p.set_defaults(func=func)
    from tandem.commands.bench import add_bench_parser
    from tandem.commands.draft import add_draft_parser

    add_bench_parser(sub)
    add_draft_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ModelError, PlacementError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
