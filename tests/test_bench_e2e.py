"""`tandem bench --quick` end to end, limited to 2 prompts: the real engines, the real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tandem.benchmarks.systems import NOT_IN_VLLM, OPT_IN, SYSTEMS

REQUIRED = {"name", "tokens_per_s", "speedup", "mean_accepted_tokens", "acceptance_rate"}


@pytest.mark.slow
def test_quick_bench_writes_json_table_and_plot(tmp_path, model_path):
    out = tmp_path / "bench"
    # A child process: the bench sets its thread count before torch starts, as `tandem` does.
    proc = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "bench", "--quick", "--limit", "2"]
        + ["--controlled-acceptance", "0.9", "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    result = json.loads((out / "bench.json").read_text())
    names = [s["name"] for s in result["systems"]]
    assert names[0] == "vllm-target" == result["baseline"]
    absent = {a["name"] for a in result["absent_systems"]}
    # every system either ran or says why it could not; vLLM's ngram and the tandem server
    # with speculation off exist on every setup
    assert set(names) | absent == set(SYSTEMS) - OPT_IN | set(NOT_IN_VLLM)
    assert {"vllm-ngram", "tandem-target"} <= set(names)
    for system in result["systems"]:
        assert REQUIRED | {"mismatches"} <= set(system), system["name"]
        assert system["prompts"] == 2
        assert system["mismatches"] == 0, (system["name"], system["mismatched_question_ids"])
        assert system["tokens_per_s"] > 0 and system["speedup"] > 0
        assert system["ttft_s"]["p50"] > 0 and system["tpot_s"]["p90"] > 0
    assert result["systems"][0]["speedup"] == 1.0
    ngram = next(s for s in result["systems"] if s["name"] == "vllm-ngram")
    assert ngram["acceptance_rate"] is None or 0 <= ngram["acceptance_rate"] <= 1
    assert result["cost"]["context_cached"] and result["cost"]["cost_ratio"] > 0
    assert {c["concurrency"] for c in result["concurrency"]} == {1, 4}
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

    table = (out / "bench.md").read_text()
    assert "| vllm-ngram |" in table and "| tandem-target |" in table
    assert "| tandem-ngram-seq |" in table
    assert "### tandem-suffix" in table and "Controlled acceptance (measurement tool" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
