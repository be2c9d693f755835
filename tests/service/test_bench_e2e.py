"""`tandem bench --quick` end to end, limited to 2 prompts: the real engines, the real servers.

One run covers every kind of system the bench builds: vLLM in-process (the target, ngram; eagle3
with tandem's head is built by the same Builder in tests/service/test_eagle_train.py), vLLM's own
OpenAI server (`vllm serve` with ngram, over HTTP; the target alone there differs only in one
argument, and a server start costs half a minute), tandem's shared server (off, ngram) and a
server of its own (auto, which drafts from the EAGLE head too), plus the cost measurement and the
controlled-acceptance tool, pipelined and sequential. The other tandem modes are requests to the
same server with another mode name. Which systems run by default is
`choose`'s (tests/unit/test_bench_metrics.py); the draft-model systems, at a fifth of the
target's speed here, would only add minutes. 24 new tokens per prompt instead of --quick's 64:
what is checked holds for any length (the outputs equal, drafts flow, every figure is there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REQUIRED = {"name", "tokens_per_s", "speedup", "mean_accepted_tokens", "acceptance_rate"}
SYSTEMS = ["vllm-ngram", "vllm-serve-ngram", "tandem-target", "tandem-ngram", "tandem-auto"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_quick_bench_writes_json_table_and_plot(tmp_path, model_path):
    out = tmp_path / "bench"
    # A child process: the bench sets its thread count before torch starts, as `tandem` does.
    proc = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "bench", "--quick", "--limit", "2"]
        + ["--systems", ",".join(SYSTEMS)]
        + ["--max-new-tokens", "24", "--cost-repeats", "1", "--controlled-acceptance", "0.9"]
        + ["--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    result = json.loads((out / "bench.json").read_text())
    by_name = {s["name"]: s for s in result["systems"]}
    assert list(by_name) == ["vllm-target", *SYSTEMS] and result["baseline"] == "vllm-target"
    for system in result["systems"]:
        assert REQUIRED | {"mismatches"} <= set(system), system["name"]
        assert system["prompts"] == 2
        assert system["mismatches"] == 0, (system["name"], system["mismatched_question_ids"])
        assert system["tokens_per_s"] > 0 and system["speedup"] > 0
        assert system["ttft_s"]["p50"] > 0 and system["tpot_s"]["p90"] > 0
    assert result["systems"][0]["speedup"] == 1.0
    ngram = by_name["vllm-ngram"]
    assert ngram["acceptance_rate"] is None or 0 <= ngram["acceptance_rate"] <= 1
    # vLLM's own server: what a user runs, driven over HTTP, its counters read over HTTP
    served = by_name["vllm-serve-ngram"]
    assert served["kind"] == "vLLM OpenAI server" and "--generation-config" in served["command"]
    assert served["draft_tokens"] > 0
    # auto names the sources it drafted from
    sources = by_name["tandem-auto"]["sources"]
    assert sources and set(sources) <= {"ngram", "suffix", "eagle"}
    assert result["cost"]["context_cached"] and result["cost"]["cost_ratio"] > 0
    assert {(c["system"], c["concurrency"]) for c in result["concurrency"]} >= {
        (name, n) for name in ("vllm-serve-ngram", "tandem-auto") for n in (1, 4)
    }
    assert result["machine"]["versions"]["torch"]
    assert result["threads_per_engine"] == 1
    assert result["command"].startswith("tandem bench --quick --limit 2")
    # the measurement tool ran on its own --measurement server, losslessly
    # pipelined and sequential drafting, side by side
    entries = result["controlled_acceptance"]
    assert [e["pipelined"] for e in entries] == [True, False]
    for controlled in entries:
        assert controlled["alpha"] == 0.9 and controlled["mismatches"] == 0
        assert controlled["mean_accepted_tokens"] > 1 and controlled["speedup"] > 0
    assert entries[0]["cache_hit_rate"] > 0 and entries[1]["cache_hit_rate"] is None

    check_breakdown(result, {"vllm-target", "tandem-target", "tandem-ngram"}, {1, 4})

    table = (out / "bench.md").read_text()
    assert "## Where the time goes" in table
    for name in ("vllm-ngram", "vllm-serve-ngram", "tandem-target", "tandem-ngram"):
        assert f"| {name} |" in table
    assert "### tandem-auto" in table and "Controlled acceptance (measurement tool" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_breakdown(result: dict, systems: set[str], levels: set[int]) -> None:
    """Every timed system has its step broken down at every level, and the parts add up."""
    entries = {(e["system"], e["concurrency"]): e for e in result["breakdown"]}
    assert {(s, n) for s in systems for n in levels} <= set(entries)
    for (system, _), entry in entries.items():
        assert not system.startswith("vllm-serve-")  # no timers inside vLLM's server
        ms = entry["ms_per_step"]
        assert entry["steps"] > 0 and entry["tokens_per_step"] >= 1 and ms["forward"] > 0
        parts = ms["schedule"] + ms["forward"] + ms["proposer"] + ms["output"]
        assert abs(parts - ms["step"]) < 1e-6 * ms["step"] + 1e-9
        if system.startswith("tandem-"):
            assert ms["stream"] > 0 and ms["handoff"] > 0 and ms["coordinator"] > 0
    for level in levels:
        drafted = entries[("tandem-ngram", level)]
        if level == 1:  # at 4 streams the draft-length policy drafts nothing
            assert drafted["drafter_bytes_per_step"] > 0 and drafted["drafter_rtt_mean_ms"] > 0
        if "tandem-target" in systems:
            assert entries[("tandem-target", level)]["drafter_messages"] == 0  # `off` is free
