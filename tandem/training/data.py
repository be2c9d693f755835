"""Training data for an EAGLE-3 head: the target's own greedy answers to tandem's prompt set,
and the target's features on them, read once and reused by every epoch.

`build(recipe, folder)` runs resumable phases into `folder`, all on the target in vLLM
(tandem.training.features):

1. the stage-one prompts (`tandem.training.prompts`) answered by the target, greedy, batched;
2. stage-two prompts made from those answers (summaries, questions, extraction, translation
   over passages the target wrote), answered the same way;
3. stage three: a second turn on stage-one conversations (a follow-up question over the
   target's own first answer), answered the same way;
4. one prefill pass of the target over every conversation, keeping at each position the
   auxiliary features the head reads (from the serving path's own feature tap) and the
   target's top-k next-token distribution (the soft labels; its first entry the greedy choice),
   in shards of 64 conversations.

Every 20th conversation is held out for measuring acceptance. `recipe.json` records what made
the data; the same recipe makes the same prompts, and greedy answers (up to floating-point
ties). A run may stop at any point: the next one finishes what is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tandem.training import TrainingError
from tandem.training.prompts import PromptSpec, stage_one, stage_three, stage_two

RECIPE = "recipe.json"
CONVERSATIONS = "conversations.jsonl"
FEATURES = "features"
THROUGHPUT = "throughput.jsonl"  # per phase and run: tokens and seconds
HELDOUT_EVERY = 20
SHARD_SIZE = 64
# Stage-one categories whose answers are prose a stage-two task can work on.
PASSAGE_SOURCES = ("article", "explanation", "writing", "questions", "roleplay", "long")


@dataclass(frozen=True)
class DataRecipe:
    target: str  # the target's folder
    seed: int = 0
    prompts: int = 2000  # stage-one prompts; stages two and three add up to one each per answer
    max_tokens: int = 256  # new tokens per answer
    aux_layers: tuple[int, ...] = ()  # () = vLLM's default for the target
    generation_batch: int = 128
    top_k: int = 8  # soft labels: the target's k most likely next tokens per position
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. the command)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise TrainingError(f"top_k must be at least 1 (the greedy choice), not {self.top_k}")


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
    """Every 20th stage-one prompt, and the later stages' tasks over its answer."""
    return int(conversation_id.rsplit("-", 1)[-1]) % HELDOUT_EVERY == 0


def build(recipe: DataRecipe, folder: str | Path, progress: bool = True) -> Path:
    """Generate (or finish generating) the data set `recipe` describes in `folder`."""
    from tandem.speculation.eagle_format import default_aux_layers, read_config
    from tandem.training.features import TargetReader

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _record_recipe(recipe, folder)
    tokenizer = _tokenizer(recipe.target)
    layers = recipe.aux_layers or default_aux_layers(
        read_config(recipe.target)["num_hidden_layers"]
    )
    reader = TargetReader(recipe.target, tuple(layers), recipe.top_k, max_len=4096)
    try:
        first_specs = stage_one(recipe.seed, recipe.prompts)
        first = _answer(reader, tokenizer, recipe, first_specs, folder, progress, "stage 1")
        passages = [
            (c.id.removeprefix("s1-"), tokenizer.decode(c.response, skip_special_tokens=True))
            for c in first
            if c.category in PASSAGE_SOURCES
        ]
        _answer(
            reader, tokenizer, recipe, stage_two(recipe.seed, passages), folder, progress, "stage 2"
        )
        firsts = [
            (spec, tokenizer.decode(c.response, skip_special_tokens=True))
            for spec, c in zip(first_specs, first, strict=True)
        ]
        _answer(
            reader, tokenizer, recipe, stage_three(recipe.seed, firsts), folder, progress, "stage 3"
        )
        extract(reader, folder, progress)
    finally:
        reader.close()
    return folder


def load_conversations(folder: str | Path) -> list[Conversation]:
    path = Path(folder) / CONVERSATIONS
    if not path.is_file():
        return []
    return [Conversation(**json.loads(line)) for line in path.read_text().splitlines() if line]


def render(tokenizer: Any, turns: Sequence[str]) -> list[int]:
    """A chat prompt as token ids (user and assistant turns alternating, the user's first and
    last), rendered as tandem's server and bench render it."""
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(rendered, add_special_tokens=False)


def _answer(
    reader: Any,
    tokenizer: Any,
    recipe: DataRecipe,
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
        for chunk in _chunks(todo, recipe.generation_batch):
            ids = [render(tokenizer, p.turns) for p in chunk]
            started = time.perf_counter()
            answers = reader.greedy(ids, recipe.max_tokens)
            _throughput(folder, label, sum(map(len, answers)), started)
            for spec, prompt, response in zip(chunk, ids, answers, strict=True):
                conversation = Conversation(spec.id, spec.category, prompt, response)
                out.write(json.dumps(asdict(conversation)) + "\n")
                have[spec.id] = conversation
            out.flush()
            bar.update(len(chunk))
    bar.close()
    return [have[p.id] for p in prompts]


def extract(reader: Any, folder: Path, progress: bool = True) -> None:
    """The target's features on every conversation not in a shard yet, in new shards of
    SHARD_SIZE conversations (safetensors, named after their first conversation): tokens, aux,
    topk_ids, topk_logp, greedy (tandem.training.features.TargetReader.read), offsets,
    prompt_lens; the conversation ids in the metadata."""
    import torch

    (folder / FEATURES).mkdir(exist_ok=True)
    done = {i for path in _shards(folder) for i in _shard_ids(path)}
    todo = [c for c in load_conversations(folder) if c.id not in done]
    bar = tqdm(
        total=sum(len(c.prompt) + len(c.response) for c in todo),
        desc="features",
        unit="tok",
        unit_scale=True,
        disable=not progress,
    )
    for shard in _chunks(todo, SHARD_SIZE):
        started = time.perf_counter()
        rows = reader.read([c.prompt + c.response for c in shard])
        tokens = sum(len(r["tokens"]) for r in rows)
        _write_shard(folder / FEATURES / f"shard-{shard[0].id}.safetensors", shard, rows, torch)
        _throughput(folder, "features", tokens, started)
        bar.update(tokens)
    bar.close()


def _shards(folder: Path) -> list[Path]:
    return sorted((folder / FEATURES).glob("shard-*.safetensors"))


def _shard_ids(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["ids"])


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
    topk_ids: Any  # [n, k]: row t is the target's k likeliest tokens after position t
    topk_logp: Any  # [n, k]: their log-probabilities
    greedy: Any
    prompt_len: int

    @property
    def heldout(self) -> bool:
        return is_heldout(self.id)


def read_recipe(folder: str | Path) -> dict[str, Any]:
    """The recipe a data folder was made with (its target, above all)."""
    path = Path(folder) / RECIPE
    if not path.is_file():
        raise TrainingError(f"{folder}: not a data folder (no {RECIPE}); run `tandem draft data`")
    return json.loads(path.read_text())


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
                    t["topk_ids"][a:b].long(),
                    t["topk_logp"][a:b],
                    t["greedy"][a:b].long(),
                    int(t["prompt_lens"][i]),
                )
            )
    return out


def greedy_counts(examples: Sequence[Example], vocab_size: int = 0) -> Any:
    """How often the target chose each token id (its greedy choice at every position) in
    `examples`: a tensor of at least `vocab_size` counts."""
    import torch

    chosen = [e.greedy for e in examples]
    ids = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
    return torch.bincount(ids, minlength=vocab_size)


def throughput(folder: str | Path) -> dict[str, dict[str, float]]:
    """Per phase, the tokens it made and the seconds it took, over every run into `folder`:
    what a data set costs on this machine."""
    path = Path(folder) / THROUGHPUT
    out: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        phase = out.setdefault(record["phase"], {"tokens": 0, "seconds": 0.0})
        phase["tokens"] += record["tokens"]
        phase["seconds"] += record["seconds"]
    for phase in out.values():
        phase["tokens_per_hour"] = round(3600 * phase["tokens"] / max(phase["seconds"], 1e-9))
    return out


def _throughput(folder: Path, phase: str, tokens: int, started: float) -> None:
    record = {"phase": phase, "tokens": tokens, "seconds": round(time.perf_counter() - started, 3)}
    with (folder / THROUGHPUT).open("a") as f:
        f.write(json.dumps(record) + "\n")


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


def _record_recipe(recipe: DataRecipe, folder: Path) -> None:
    """Write the recipe, refusing a folder that holds data of another one. More prompts extend
    the same data (prompt ids are stable)."""
    recorded = folder / RECIPE
    mine = _recipe_dict(recipe)
    if recorded.is_file():
        theirs = json.loads(recorded.read_text())
        differ = sorted(
            k for k in mine if k not in ("extra", "prompts") and theirs.get(k) != mine[k]
        )
        if differ:
            raise TrainingError(
                f"{folder} holds data of another recipe (differs in {', '.join(differ)}); "
                "use another folder"
            )
    recorded.write_text(json.dumps(mine, indent=2) + "\n")
