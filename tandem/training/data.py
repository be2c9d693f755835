"""Training data for an EAGLE-3 head: the target's own greedy answers to tandem's prompt set,
and the target's features on them, extracted once and reused by every epoch.

`build(recipe, folder)` runs three resumable phases into `folder`:

1. the stage-one prompts (`tandem.training.prompts`) answered by the target, greedy, in vLLM;
2. stage-two prompts made from those answers (summaries, questions, extraction, translation
   over passages the target wrote), answered the same way;
3. one forward of the target (Hugging Face transformers, fp32) over every conversation,
   keeping at each position the auxiliary features the head reads, the target's final hidden
   state (its distribution, through its LM head, is the soft label) and its greedy choice.

Every 20th conversation is held out for measuring acceptance. `recipe.json` records what made
the data; the same recipe makes the same prompts, and greedy answers (up to floating-point
ties).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tandem.training.prompts import PromptSpec, stage_one, stage_two

RECIPE = "recipe.json"
CONVERSATIONS = "conversations.jsonl"
FEATURES = "features"
HELDOUT_EVERY = 20
# Stage-one categories whose answers are prose a stage-two task can work on.
PASSAGE_SOURCES = ("article", "explanation", "writing", "questions", "roleplay")


@dataclass(frozen=True)
class DataRecipe:
    target: str  # the target's folder
    seed: int = 0
    prompts: int = 2000  # stage-one prompts; stage two adds up to one per prose answer
    max_tokens: int = 256  # new tokens per answer
    aux_layers: tuple[int, ...] = ()  # () = vLLM's default for the target
    generation_batch: int = 128
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. the command)


@dataclass(frozen=True)
class Conversation:
    id: str
    category: str
    prompt: list[int]
    response: list[int]

    @property
    def heldout(self) -> bool:
        return is_heldout(self.id)


def is_heldout(conversation_id: str) -> bool:
    """Every 20th stage-one prompt, and the stage-two task over its answer."""
    return int(conversation_id.rsplit("-", 1)[-1]) % HELDOUT_EVERY == 0


def build(recipe: DataRecipe, folder: str | Path, progress: bool = True, workers: int = 1) -> Path:
    """Generate (or finish generating) the data set `recipe` describes in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recorded = folder / RECIPE
    mine = _recipe_dict(recipe)
    if recorded.is_file():
        theirs = json.loads(recorded.read_text())
        # More prompts extend the same data (prompt ids are stable); anything else is another
        # data set.
        differ = sorted(
            k for k in mine if k not in ("extra", "prompts") and theirs.get(k) != mine[k]
        )
        if differ:
            raise ValueError(
                f"{folder} holds data of another recipe (differs in {', '.join(differ)}); "
                "use another folder"
            )
    recorded.write_text(json.dumps(mine, indent=2) + "\n")
    tokenizer = _tokenizer(recipe.target)
    generator = _Generator(recipe)
    try:
        first = stage_one(recipe.seed, recipe.prompts)
        done = _answer(generator, tokenizer, first, folder, progress, "stage 1")
        passages = [
            (c.id.removeprefix("s1-"), tokenizer.decode(c.response, skip_special_tokens=True))
            for c in done
            if c.category in PASSAGE_SOURCES
        ]
        _answer(generator, tokenizer, stage_two(recipe.seed, passages), folder, progress, "stage 2")
    finally:
        generator.close()
    extract(recipe, folder, progress, workers=workers)
    return folder


def load_conversations(folder: str | Path) -> list[Conversation]:
    path = Path(folder) / CONVERSATIONS
    if not path.is_file():
        return []
    return [Conversation(**json.loads(line)) for line in path.read_text().splitlines() if line]


def render(tokenizer: Any, text: str) -> list[int]:
    """A one-turn chat prompt as token ids, rendered as tandem's server and bench render it."""
    messages = [{"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(rendered, add_special_tokens=False)


def _answer(
    generator: _Generator,
    tokenizer: Any,
    prompts: Sequence[PromptSpec],
    folder: Path,
    progress: bool,
    label: str,
) -> list[Conversation]:
    """Answers to `prompts`, generating only those not in conversations.jsonl yet."""
    have = {c.id: c for c in load_conversations(folder)}
    todo = [p for p in prompts if p.id not in have]
    bar = tqdm(
        total=len(prompts),
        initial=len(prompts) - len(todo),
        desc=label,
        unit="prompt",
        disable=not progress,
    )
    with (folder / CONVERSATIONS).open("a") as out:
        for chunk in _chunks(todo, generator.recipe.generation_batch):
            ids = [render(tokenizer, p.text) for p in chunk]
            for spec, prompt, response in zip(chunk, ids, generator.greedy(ids), strict=True):
                conversation = Conversation(spec.id, spec.category, prompt, response)
                out.write(json.dumps(asdict(conversation)) + "\n")
                have[spec.id] = conversation
            out.flush()
            bar.update(len(chunk))
    bar.close()
    return [have[p.id] for p in prompts]


class _Generator:
    """Greedy answers from the target in an in-process vLLM engine, started on first use."""

    def __init__(self, recipe: DataRecipe) -> None:
        self.recipe = recipe
        self.llm = None

    def greedy(self, prompts: list[list[int]]) -> list[list[int]]:
        from vllm import SamplingParams

        if self.llm is None:
            self.llm = _vllm(self.recipe.target, self.recipe.max_tokens)
        params = SamplingParams(temperature=0.0, max_tokens=self.recipe.max_tokens)
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False
        )
        return [list(o.outputs[0].token_ids) for o in outputs]

    def close(self) -> None:
        self.llm = None


def _vllm(target: str, max_tokens: int) -> Any:
    # The engine runs in this process; the KV cache is bounded so the run stays a guest on a
    # shared machine.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm import LLM

    return LLM(target, dtype="float32", enforce_eager=True, max_model_len=2048, seed=0)


# ---- features -----------------------------------------------------------------------------------


def extract(
    recipe: DataRecipe,
    folder: Path,
    progress: bool = True,
    shard_size: int = 64,
    workers: int = 1,
) -> None:
    """The target's features on every conversation not in a shard yet, in new shards of
    `shard_size` conversations (safetensors, named after their first conversation): tokens,
    aux (fp16), final (fp16, the target's last hidden state after its norm), greedy (the
    target's argmax), offsets, prompt_lens; the conversation ids in the metadata. `workers` > 1
    extracts shards in that many processes of one thread each."""
    (folder / FEATURES).mkdir(exist_ok=True)
    done = {i for path in _shards(folder) for i in _shard_ids(path)}
    todo = [c for c in load_conversations(folder) if c.id not in done]
    shards = list(_chunks(todo, shard_size))
    bar = tqdm(
        total=sum(len(c.prompt) + len(c.response) for c in todo),
        desc="features",
        unit="tok",
        unit_scale=True,
        disable=not progress,
    )
    if workers <= 1:
        for shard in shards:
            _extract_shard(recipe, folder, shard)
            bar.update(sum(len(c.prompt) + len(c.response) for c in shard))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
            jobs = {pool.submit(_extract_shard, recipe, folder, shard): shard for shard in shards}
            for job in as_completed(jobs):
                job.result()
                bar.update(sum(len(c.prompt) + len(c.response) for c in jobs[job]))
    bar.close()


_MODEL: tuple[Any, tuple[int, ...]] | None = None  # the target, loaded once per process


def _extract_shard(recipe: DataRecipe, folder: Path, shard: Sequence[Conversation]) -> None:
    import torch

    global _MODEL
    if _MODEL is None:
        _MODEL = _target_model(recipe)
    model, layers = _MODEL
    rows = [_features(model, layers, c.prompt + c.response) for c in shard]
    _write_shard(folder / FEATURES / f"shard-{shard[0].id}.safetensors", shard, rows, torch)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _shards(folder: Path) -> list[Path]:
    return sorted((folder / FEATURES).glob("shard-*.safetensors"))


def _shard_ids(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["ids"])


def _target_model(recipe: DataRecipe) -> tuple[Any, tuple[int, ...]]:
    import torch
    from transformers import AutoModelForCausalLM

    from tandem.speculation.eagle_format import default_aux_layers

    model = AutoModelForCausalLM.from_pretrained(recipe.target, dtype=torch.float32).eval()
    layers = recipe.aux_layers or default_aux_layers(model.config.num_hidden_layers)
    return model, tuple(layers)


def _features(model: Any, layers: tuple[int, ...], tokens: list[int]) -> dict[str, Any]:
    import torch

    with torch.inference_mode():
        out = model(torch.tensor([tokens]), output_hidden_states=True)
    states = out.hidden_states
    return {
        "tokens": torch.tensor(tokens, dtype=torch.int32),
        "aux": torch.cat([states[layer][0] for layer in layers], -1).half(),
        "final": states[-1][0].half(),
        "greedy": out.logits[0].argmax(-1).int(),
    }


def _write_shard(path: Path, shard: Sequence[Conversation], rows: list[dict], torch: Any) -> None:
    from safetensors.torch import save_file

    lengths = [len(r["tokens"]) for r in rows]
    tensors = {key: torch.cat([r[key] for r in rows]) for key in rows[0]}
    tensors["offsets"] = torch.tensor([0, *lengths]).cumsum(0)
    tensors["prompt_lens"] = torch.tensor([len(c.prompt) for c in shard], dtype=torch.int32)
    meta = {"ids": json.dumps([c.id for c in shard])}
    tmp = path.with_suffix(".partial")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.rename(path)


@dataclass
class Example:
    """One conversation's tensors (views into its shard)."""

    id: str
    tokens: Any
    aux: Any
    final: Any
    greedy: Any
    prompt_len: int

    @property
    def heldout(self) -> bool:
        return is_heldout(self.id)


def load_features(folder: str | Path) -> list[Example]:
    """Every conversation's features, in shard order."""
    from safetensors.torch import load_file

    out: list[Example] = []
    for path in _shards(Path(folder)):
        ids = _shard_ids(path)
        t = load_file(str(path))
        offsets = t["offsets"].tolist()
        for i, conversation_id in enumerate(ids):
            a, b = offsets[i], offsets[i + 1]
            out.append(
                Example(
                    conversation_id,
                    t["tokens"][a:b].long(),
                    t["aux"][a:b],
                    t["final"][a:b],
                    t["greedy"][a:b].long(),
                    int(t["prompt_lens"][i]),
                )
            )
    return out


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _tokenizer(target: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(target)


def _recipe_dict(recipe: DataRecipe) -> dict[str, Any]:
    out = asdict(recipe)
    out["aux_layers"] = list(recipe.aux_layers)
    return out
