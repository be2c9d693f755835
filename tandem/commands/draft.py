"""`tandem draft`: make the training data, train an EAGLE-3 head, measure its acceptance.

    tandem draft data --out DATA --prompts 2000 --seed 0
    tandem draft train --data DATA --out HEAD --epochs 3 --seed 0
    tandem draft eval --head HEAD --data DATA
    tandem draft trim --head HEAD --data DATA --sizes 2048,4096,8192 --out TRIMMED
    tandem draft export --head CHECKPOINT --out HEAD   # an online-learned head, for vLLM too

Long runs: `--threads N` bounds torch's threads; run them under `nice` on a shared machine.
`train --resume` continues from HEAD/checkpoint.pt; `data` resumes by itself. `train --init HEAD0`
starts from an existing head (and its draft vocabulary) instead of the target's rows.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any


def add_draft_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `draft` on the `tandem` command's subparsers."""
    from tandem.training.train import TrainOptions

    draft = subparsers.add_parser(
        "draft",
        help="train EAGLE-3 draft heads for a target (self-distillation)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = draft.add_subparsers(dest="draft_command", required=True)

    data = sub.add_parser("data", help="the target's answers to tandem's prompt set, and features")
    data.add_argument("--out", required=True, help="data folder (resumes what is there)")
    data.add_argument("--target", help="target model (default: the config's models.target)")
    data.add_argument("--prompts", type=int, default=2000, help="stage-one prompts (2000)")
    data.add_argument("--max-tokens", type=int, default=256, help="tokens per answer (256)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument(
        "--top-k", type=int, default=8, help="soft labels: the target's top k per position (8)"
    )
    data.set_defaults(func=cmd_data)

    train = sub.add_parser("train", help="train a head on a data folder; writes HEAD/")
    train.add_argument("--data", required=True, help="a folder made by `tandem draft data`")
    train.add_argument("--out", required=True, help="the head folder (standard EAGLE-3 format)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    for name in (
        "draft_vocab",
        "epochs",
        "lr",
        "warmup",
        "batch_tokens",
        "max_len",
        "ttt_steps",
        "seed",
        "checkpoint_every",
        "eval_every",
        "eval_conversations",
        "device",
        "init",
        "dtype",
    ):
        default = defaults[name]
        train.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            default=default,
            help=f"default {default}",
        )
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="acceptance of a head on the held-out conversations")
    evaluate.add_argument("--head", required=True)
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--k", type=int, default=4, help="draft length (4)")
    evaluate.add_argument("--conversations", type=int, help="at most this many (default all)")
    evaluate.add_argument(
        "--vllm",
        action="store_true",
        help="also measure it in vLLM's own eagle3 (the same prompts, greedy, as many tokens)",
    )
    evaluate.add_argument(
        "--feature-encoding",
        choices=("float16", "int8"),
        default="float16",
        help="the features as the drafter would receive them (speculation.feature_encoding)",
    )
    evaluate.set_defaults(func=cmd_eval)

    trim = sub.add_parser(
        "trim",
        help="VocabTrim: the head's draft vocabulary cut to the target's most chosen tokens; "
        "acceptance and drafting time per size",
    )
    trim.add_argument("--head", required=True)
    trim.add_argument("--data", required=True, help="counts (training part) and held-out rows")
    trim.add_argument("--sizes", required=True, help="draft vocabulary sizes, e.g. 2048,4096")
    trim.add_argument("--out", required=True, help="a folder for the trimmed heads")
    trim.add_argument("--k", type=int, default=4, help="draft length (4)")
    trim.add_argument("--conversations", type=int, help="held-out conversations (default all)")
    trim.set_defaults(func=cmd_trim)

    export = sub.add_parser(
        "export",
        help="a head learned online (speculation.drafters.online.checkpoint_path) in the "
        "standard format vLLM's eagle3 loads, checked against the target",
    )
    export.add_argument("--head", required=True, help="the checkpoint folder")
    export.add_argument("--out", required=True, help="the folder to write")
    export.add_argument("--target", help="target model (default: the config's models.target)")
    export.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    export.set_defaults(func=cmd_export)

    for p in (data, train, evaluate, trim, export):
        p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
        p.add_argument("--config", help="YAML config whose models to use")
    return draft


def _threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def cmd_data(args: argparse.Namespace) -> int:
    from tandem.cluster.config.deployment import TandemConfig
    from tandem.models import resolve_model
    from tandem.training.data import DataRecipe, build, throughput

    _threads(args)
    config = TandemConfig.from_yaml(args.config) if args.config else TandemConfig()
    target = resolve_model(args.target or config.models.target, config.models.cache_dir())
    recipe = DataRecipe(str(target), args.seed, args.prompts, args.max_tokens, top_k=args.top_k)
    print(build(recipe, args.out))
    print(json.dumps(throughput(args.out)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tandem.training.train import TrainOptions, train

    _threads(args)
    known = {f.name for f in fields(TrainOptions)}
    options = TrainOptions(**{k: v for k, v in vars(args).items() if k in known})
    print(train(options, resume=args.resume))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tandem.speculation.eagle import EagleDrafter
    from tandem.speculation.eagle_acceptance import acceptance
    from tandem.training.data import load_features, read_recipe

    _threads(args)
    recipe = read_recipe(args.data)
    heldout = [e for e in load_features(args.data) if e.heldout][: args.conversations]
    if args.feature_encoding != "float16":
        heldout = [_encoded(e, args.feature_encoding) for e in heldout]
    drafter = EagleDrafter(args.head, recipe["target"])
    result = {"conversations": len(heldout), **acceptance(drafter, heldout, args.k)}
    if args.vllm:
        result["vllm"] = vllm_acceptance(args.head, recipe["target"], heldout, args.k)
    print(json.dumps(result))
    return 0


def cmd_trim(args: argparse.Namespace) -> int:
    import torch

    from tandem.speculation.eagle import EagleDrafter
    from tandem.speculation.eagle_acceptance import acceptance
    from tandem.training.data import load_features, read_recipe
    from tandem.training.vocab_trim import trim

    _threads(args)
    target = read_recipe(args.data)["target"]
    examples = load_features(args.data)
    counted = [e for e in examples if not e.heldout]
    heldout = [e for e in examples if e.heldout][: args.conversations]
    for size in sorted({int(s) for s in args.sizes.split(",")}):
        folder = trim(args.head, target, counted, size, Path(args.out) / f"vocab-{size}")
        drafter = EagleDrafter(folder, target, dtype=torch.float16)  # as the drafter serves it
        print(json.dumps({"draft_vocab": size, **acceptance(drafter, heldout, args.k)}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Load the checkpoint as a drafter would (refused if it does not fit the target), write it
    in the standard format: config.json and model.safetensors, without the online.json."""
    import torch

    from tandem.cluster.config.deployment import TandemConfig
    from tandem.models import resolve_model
    from tandem.speculation.eagle_head import load_head, save_head

    config = TandemConfig.from_yaml(args.config) if args.config else TandemConfig()
    target = resolve_model(args.target or config.models.target, config.models.cache_dir())
    head = load_head(args.head, target)
    print(save_head(head, args.out, dtype=getattr(torch, args.dtype)))
    return 0


def _encoded(example: Any, encoding: str) -> Any:
    """The example with its features as they arrive at a drafter over the wire."""
    import dataclasses

    import torch

    from tandem.speculation import feature_codec

    values, scales = feature_codec.encode(example.aux.numpy(), encoding)
    return dataclasses.replace(example, aux=torch.from_numpy(feature_codec.decode(values, scales)))


def vllm_acceptance(head: str, target: str, examples: list, k: int) -> dict[str, float]:
    """Mean tokens per target forward of vLLM's in-process eagle3 with this head, greedy, on
    the examples' prompts for as many tokens as their answers (vLLM's own counters)."""
    import os

    from tandem.benchmarks.records import GenerationParams
    from tandem.benchmarks.vllm_system import VllmSystem
    from tandem.benchmarks.workload import Prompt

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    spec = {"method": "eagle3", "model": head, "num_speculative_tokens": k}
    args = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}
    system = VllmSystem("vllm-eagle3", target, args, spec)
    drafts = accepted = 0
    for e in examples:
        prompt = Prompt(e.id, "", "", tuple(e.tokens[: e.prompt_len].tolist()))
        new = len(e.tokens) - e.prompt_len
        record = system.run(prompt, GenerationParams(max_new_tokens=new, temperature=0.0))
        drafts += record.drafts
        accepted += record.accepted_tokens
    system.close()
    return {f"accept_len_k{k}": round(1 + accepted / max(1, drafts), 4), "drafts": drafts}
