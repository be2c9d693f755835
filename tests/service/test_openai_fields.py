"""tandem's OpenAI layer against vLLM's own request models (vLLM's ChatCompletionRequest and
CompletionRequest, the pydantic types `vllm serve` parses with): every field vLLM knows is one
tandem reads, or one it accepts at vLLM's default and refuses otherwise. A vLLM upgrade that adds
a field fails here instead of reaching users as an ignored field. (tests/service: it imports
vLLM; no service starts.)"""

from __future__ import annotations

import pytest
from pydantic_core import PydanticUndefined

from tandem.cluster.frontdoor import openai_requests as o

pytestmark = pytest.mark.timeout(300)


def _vllm_models():
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return {True: ChatCompletionRequest, False: CompletionRequest}


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_every_vllm_request_field_is_read_or_held_at_vllms_default(chat):
    model = _vllm_models()[chat]
    handled = (o.HANDLED_CHAT if chat else o.HANDLED_COMPLETION) | set(o.SAMPLING)
    defaults_only = o.DEFAULTS_ONLY | o.ENDPOINT_DEFAULTS_ONLY[chat]
    unknown = [name for name in model.model_fields if name not in handled | set(defaults_only)]
    assert not unknown, f"fields of vLLM's {model.__name__} tandem neither reads nor refuses"
    for name, spec in model.model_fields.items():
        if name not in defaults_only or name in handled:
            continue
        default = spec.default_factory() if spec.default is PydanticUndefined else spec.default
        # None in vLLM's model means "not set": tandem then names the value it behaves as.
        assert default is None or default == defaults_only[name], (name, default)
