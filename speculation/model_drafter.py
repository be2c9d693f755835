"""A small causal LM as drafter, with one KV cache per request.

Greedy drafting: the rejection sampler treats drafts without probabilities as deterministic
proposals, which keeps both greedy and sampled outputs exact. The cache keeps every position
whose token still agrees with the committed sequence, so accepted drafts cost nothing to re-read
and rejected ones are cropped away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.speculation.source import DraftSource, History, common_prefix


@dataclass
class CacheState:
    cache: Any  # transformers.DynamicCache
    tokens: list[int] = field(default_factory=list)  # the tokens whose keys/values it holds


class ModelDrafter(DraftSource):
    """Mode `model`: a draft LM, one KV cache per request (in the request's History)."""

    name = "model"

    def __init__(
        self, model_path: str | Path, device: str = "cpu", stop_below: float = 0.0
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model.to(self.device).eval()
        self.vocab_size = self.model.config.vocab_size
        # SpecDec++'s stopping rule, with the draft's own confidence standing in for its
        # acceptance predictor: end the block before a token the draft itself doubts.
        self.stop_below = stop_below

    def propose(self, history: History, extra: Sequence[int], k: int) -> list[int]:
        state = history.state.get(self.name)
        if state is None:
            state = history.state[self.name] = self.new_state()
        return self.draft(state, [*history.tokens, *extra], k)

    def new_state(self) -> CacheState:
        from transformers import DynamicCache

        return CacheState(DynamicCache(config=self.model.config))

    def draft(self, state: CacheState, history: list[int], k: int) -> list[int]:
        """k greedy tokens continuing `history` (the request's committed tokens)."""
        if k <= 0 or not history:
            return []
        keep = min(common_prefix(state.tokens, history), self._trusted(state))
        keep = min(keep, len(history) - 1)  # re-read at least one token to get next logits
        if len(state.tokens) > keep:
            state.cache.crop(keep - len(state.tokens))
            del state.tokens[keep:]
        feed = history[keep:]
        draft: list[int] = []
        with self.torch.inference_mode():
            while len(draft) < k:
                ids = self.torch.tensor([feed], device=self.device)
                logits = self._next_logits(state, ids, first=not draft)
                state.tokens += feed
                probs = logits.softmax(-1)
                token = int(probs.argmax())
                if float(probs[token]) < self.stop_below:
                    break
                draft.append(token)
                feed = [token]
        return draft

    def _trusted(self, state: CacheState) -> int:
        """Leading cache positions that may be reused as they are: all of them, here."""
        return len(state.tokens)

    def _next_logits(self, state: CacheState, ids: Any, first: bool) -> Any:
        """Logits for the token after `ids`, appending their keys/values to the cache. `first`:
        the round's first forward, the one over the newly committed tokens."""
        out = self.model(input_ids=ids, past_key_values=state.cache, use_cache=True)
        return out.logits[0, -1]
