"""Mirror-SD's correction channel for real: the target loads as tandem's Mirror class, its
early exit steers the drafter's pre-drafting mid-forward, and the output does not change."""

from __future__ import annotations

import pytest

from tandem.client import TandemClient
from tests.support.prompts import spec_bench_prompts
from tests.support.services import start_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def client():
    config = {
        "speculation": {
            "drafters": {"derive_layers": 0},
            "mirror": {"enabled": True, "layer": 20, "top_k": 4},
        }
    }
    for service in start_service(config):
        with TandemClient(service.address, timeout=300) as c:
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
