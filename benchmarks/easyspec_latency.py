"""EasySpec draft step latency and acceptance, with torch alone (no vLLM, no Ray, no server).

    python -m tandem.benchmarks.easyspec_latency --device cpu --groups 1,2,3
    python -m tandem.benchmarks.easyspec_latency --device cuda --groups 1,2,3
    python -m tandem.benchmarks.easyspec_latency --device cuda --devices 2 --groups 2

The target (Hugging Face, greedy) writes each prompt's continuation once; then, per layer group
size, the drafter replays speculative decoding against it: it drafts k tokens, the longest
agreeing prefix is accepted plus the target's own next token, and the next round starts from
there. A draft step is one `draft` call: the exact calibration forward over the newly committed
tokens, then k - 1 fuzzy forwards. With `--devices N` a group's layers go to cuda:0..N-1.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from tandem.benchmarks.workload import load_questions, render, select


@dataclass
class Replay:
    step_s: list[float]
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0

    def row(self, groups: int) -> str:
        median_ms = statistics.median(self.step_s) * 1e3
        alpha = self.accepted / self.drafted
        per_round = (self.accepted + self.rounds) / self.rounds
        return f"| {groups} | {median_ms:.1f} | {alpha:.3f} | {per_round:.2f} | {self.rounds} |"


def replay(
    draft: Callable[[list[int], int], list[int]],
    prompt: Sequence[int],
    continuation: Sequence[int],
    k: int,
    clock: Callable[[], float],
    into: Replay,
) -> None:
    """Speculative decoding of `continuation` after `prompt` with `draft(history, k)` as drafter
    and the continuation as the target's greedy verdict; adds timings and counts to `into`."""
    done = 0
    while done < len(continuation):
        history = list(prompt) + list(continuation[:done])
        start = clock()
        proposal = draft(history, k)
        into.step_s.append(clock() - start)
        want = continuation[done : done + k]
        accepted = 0
        while accepted < len(want) and proposal[accepted] == want[accepted]:
            accepted += 1
        into.drafted += k
        into.accepted += accepted
        into.rounds += 1
        done += accepted + 1  # the accepted drafts and the target's own token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device kind: cpu, cuda")
    parser.add_argument("--devices", type=int, default=1, help="devices a group spreads over")
    parser.add_argument("--groups", default="1,2,3", help="layer group sizes to measure")
    parser.add_argument("--draft-layers", type=int, default=4, help="derived draft's layers")
    parser.add_argument("--k", type=int, default=4, help="draft length")
    parser.add_argument("--categories", default="writing,coding,qa,summarization")
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tandem.models import DEFAULT_MODEL, derive_draft, resolve_model
    from tandem.speculation.easyspec import load_model_drafter

    target_path = resolve_model(DEFAULT_MODEL)
    draft_path = derive_draft(target_path, args.draft_layers)
    tokenizer = AutoTokenizer.from_pretrained(target_path)
    questions = select(load_questions(), args.categories.split(","), args.per_category)
    prompts = [list(render(q, tokenizer).token_ids) for q in questions]
    target = AutoModelForCausalLM.from_pretrained(target_path, dtype=torch.float32)
    target.to(args.device).eval()
    continuations = []
    with torch.inference_mode():
        for ids in prompts:
            out = target.generate(
                torch.tensor([ids], device=args.device),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
            )
            continuations.append(out[0, len(ids) :].tolist())
    del target
    devices = [args.device] if args.devices == 1 else [f"cuda:{i}" for i in range(args.devices)]

    def clock() -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    print(
        f"device {args.device} x{args.devices}, draft {draft_path.name}, k={args.k}, "
        f"{len(prompts)} prompts x {args.max_new_tokens} tokens, torch {torch.__version__}"
    )
    print("| layer group size | draft step median (ms) | acceptance | tokens per round | rounds |")
    print("|---|---|---|---|---|")
    for size in (int(g) for g in args.groups.split(",")):
        drafter = load_model_drafter(draft_path, size, devices)
        result = Replay([])
        for ids, continuation in zip(prompts, continuations, strict=True):
            state = drafter.new_state()
            drafter.draft(state, ids, args.k)  # warm-up, and the prompt's prefill, untimed
            replay(partial(drafter.draft, state), ids, continuation, args.k, clock, result)
        print(result.row(size), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
