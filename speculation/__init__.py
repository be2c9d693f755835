"""Speculation logic as plain modules (no Ray, no vLLM): actors and the plugin are thin shells."""
