"""One row per reported figure: what it is called in GetStats and in Prometheus, and its help.

GetStats' fields (stats_message.py, `RequestFigures.to_proto`) and the Prometheus metrics
(tandem.cluster.frontdoor.prometheus) are generated from these tables, so a new figure of a group
is the code that counts it and one row here (plus its field in protos/tandem.proto, the wire
contract, which stays written by hand). A row reads the attribute `attr` of its group's figures:
`RequestFigures` for SPECULATION, `DrafterFigures` for DRAFTERS (figures.py), a drafter replica's
`LearningStats` for LEARNING (tandem.speculation.session_stats).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Figure:
    """A figure as each surface names it: `stat`, its field in GetStats' message (None: not in
    GetStats); `metric`, its Prometheus name (None: not exported), a counter or a gauge."""

    attr: str
    help: str
    stat: str | None = None
    metric: str | None = None
    kind: Literal["counter", "gauge"] = "counter"


# What speculation did (RequestFigures: a request's, or the coordinator's sum): GetStats'
# SpeculationStats, and vLLM's own speculation counters (vllm/v1/spec_decode/metrics.py, labelled
# with the model and the engine), so dashboards built for vLLM read tandem's drafting unchanged.
SPECULATION = (
    Figure("mode", "The request's mode (empty in a sum).", stat="mode"),
    Figure(
        "drafts", "Verification rounds that carried a draft.", metric="vllm:spec_decode_num_drafts"
    ),
    Figure(
        "draft_tokens",
        "Draft tokens verified.",
        stat="draft_tokens",
        metric="vllm:spec_decode_num_draft_tokens",
    ),
    Figure(
        "accepted_tokens",
        "Draft tokens accepted.",
        stat="accepted_tokens",
        metric="vllm:spec_decode_num_accepted_tokens",
    ),
    Figure("acceptance_rate", "Accepted tokens per draft token.", stat="acceptance_rate"),
    Figure(
        "mean_accepted_length",
        "Output tokens per target forward pass.",
        stat="mean_accepted_length",
    ),
    Figure("target_steps", "Target forward passes that produced tokens.", stat="target_steps"),
    Figure("cache_hits", "Drafts served from the speculation cache.", stat="cache_hits"),
    Figure(
        "cache_misses", "Pipelined steps whose outcome was not pre-drafted.", stat="cache_misses"
    ),
    Figure(
        "skipped_waits",
        "Misses not waited for: the link's part of the round trip cost more than drafts earn.",
        stat="skipped_waits",
    ),
)

# The drafter exchange, summed over the target replicas' speculation sessions (DrafterFigures):
# fields of GetStats' Stats, and tandem's own metrics.
DRAFTERS = (
    Figure("steps", "Engine steps that called a drafter.", metric="tandem_drafter_round_trips"),
    Figure(
        "rtt_total_s",
        "Drafter round-trip time, summed.",
        metric="tandem_drafter_round_trip_seconds",
    ),
    Figure(
        "rtt_mean_s",
        "Drafter round trip per engine step that drafted.",
        stat="drafter_rtt_mean_s",
    ),
    Figure("rtt_p50_s", "The slowest replica's median round trip.", stat="drafter_rtt_p50_s"),
    Figure(
        "failures",
        "Drafter calls that failed (an error, a dead drafter).",
        stat="drafter_failures",
        metric="tandem_drafter_failures",
    ),
    Figure(
        "timeouts",
        "Drafter calls that missed their time budget (late, not failed).",
        stat="drafter_timeouts",
        metric="tandem_drafter_timeouts",
    ),
    Figure("drafters_down", "Drafter replicas currently skipped.", stat="drafters_down"),
    Figure(
        "cache_hits", "Drafts served from the speculation cache.", metric="tandem_spec_cache_hits"
    ),
    Figure("feature_bytes", "Target features sent to drafters.", stat="feature_bytes"),
)


# A drafter replica's online learning of its EAGLE-3 head (LearningStats): fields of its
# DrafterStats in GetStats, and metrics labelled with the replica (`drafter`).
LEARNING = (
    Figure(
        "head_version",
        "EAGLE-3 head versions kept by online learning.",
        stat="head_version",
        metric="tandem_drafter_head_version",
        kind="gauge",
    ),
    Figure(
        "updates_kept",
        "Online updates of the head the guard let serve.",
        stat="head_updates_kept",
        metric="tandem_drafter_head_updates_kept",
    ),
    Figure(
        "updates_rolled_back",
        "Online updates of the head rolled back: worse on held-back traffic.",
        stat="head_updates_rolled_back",
        metric="tandem_drafter_head_updates_rolled_back",
    ),
    Figure(
        "window_acceptance",
        "Accepted per drafted token of the serving head on held-back requests (last update).",
        stat="head_window_acceptance",
        metric="tandem_drafter_head_window_acceptance",
        kind="gauge",
    ),
    Figure(
        "candidate_acceptance",
        "Accepted per drafted token of the last update's head on the same requests.",
        stat="head_candidate_acceptance",
        metric="tandem_drafter_head_candidate_acceptance",
        kind="gauge",
    ),
    Figure(
        "buffer_tokens",
        "Positions held for online learning.",
        stat="head_buffer_tokens",
        metric="tandem_drafter_head_buffer_tokens",
        kind="gauge",
    ),
    Figure(
        "learn_s",
        "Time online learning held the drafter's core.",
        stat="head_learn_s",
        metric="tandem_drafter_head_learn_seconds",
    ),
    Figure(
        "slice_max_s",
        "Longest hold of the drafter's core by learning: the most a draft waited for it.",
        stat="head_slice_max_s",
        metric="tandem_drafter_head_slice_max_seconds",
        kind="gauge",
    ),
)


def stat_fields(table: Iterable[Figure], figures: Any) -> dict[str, Any]:
    """GetStats' fields of a group: {field: value} for the rows that have one."""
    return {row.stat: getattr(figures, row.attr) for row in table if row.stat is not None}


def metric_values(table: Iterable[Figure], figures: Any) -> list[tuple[Figure, float]]:
    """The Prometheus metrics of a group: (row, value) for the rows that have one."""
    return [(row, getattr(figures, row.attr)) for row in table if row.metric is not None]
