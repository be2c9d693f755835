"""The Ray actors: thin shells around vLLM (target) and tandem.speculation (drafter)."""
