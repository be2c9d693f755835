"""Mirror-SD's correction channel for real: the target loads as tandem's Mirror class, its
early exit steers the drafter's pre-drafting mid-forward, and the output does not change."""

from __future__ import annotations

import pytest

from tandem.client import TandemClient
from tests.support.prompts import spec_bench_prompts
from tests.support.services import SPECULATING

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.uses_service(SPECULATING)]


@pytest.fixture(scope="module")
def client(services):
    # SPECULATING: the Mirror-SD channel on (layer 20, top 4), n-gram drafting by default.
    with TandemClient(services.get(SPECULATING).address, timeout=300) as c:
        yield c


def test_mirror_target_is_lossless_and_its_hints_steer_the_cache(client, model_path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    prompts = spec_bench_prompts(3, ("summarization", "coding", "rag"))
    prompts.append("Count from 1 to 30, separated by commas: 1, 2, 3, 4, 5,")
    hits = 0
    for prompt in prompts:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=40, do_sample=False)
        got = client.generate(prompt, temperature=0, max_tokens=40)
        assert list(got.token_ids) == out[0, ids.shape[1] :].tolist(), prompt
        hits += got.speculation.cache_hits
    assert hits > 0
    (drafter,) = client.stats().drafters
    assert drafter.mirror_hints_used > 0  # early exits reached the drafter mid-forward
