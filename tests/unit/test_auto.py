"""Mode `auto` on a Drafter, driven without Ray or vLLM: which source it drafts from where, that it
drafts nothing when nothing pays, that it learns from the committed tokens alone, and that the
session counts each source's drafted and accepted tokens."""

import pytest

from tandem.speculation.auto import AutoSource
from tandem.speculation.drafter import Drafter
from tandem.speculation.ngram import NgramSource
from tandem.speculation.policy import PROBE_EVERY
from tandem.speculation.protocol import DraftItem, Mode, PredraftPlan
from tandem.speculation.request_sync import RequestSpec
from tandem.speculation.source import DraftSource, common_prefix
from tandem.speculation.suffix import SuffixSource
from tests.support.local_transport import LocalTransport, session_for

pytestmark = pytest.mark.timeout(120)

VERIFY_COST = 0.07


class Guesser(DraftSource):
    """A stand-in for the EAGLE-3 head: drafts the true continuation, each token right with
    the given period (every token when 1, none when 0)."""

    name = "eagle"

    def __init__(self, truth: list[int], right_every: int) -> None:
        self.truth, self.right_every = truth, right_every

    def propose(self, history, extra, k):
        start = len(history.tokens) + len(extra)
        return [
            self.truth[p] if self.right_every and p % self.right_every == 0 else -1
            for p in range(start, min(start + k, len(self.truth)))
        ]


def auto_drafter(generator: DraftSource | None = None) -> Drafter:
    ngram, suffix = NgramSource(), SuffixSource(global_tokens=0)
    sources = {"ngram": ngram, "suffix": suffix}
    if generator is not None:
        sources["eagle"] = generator
    auto = AutoSource(ngram, suffix, generator, VERIFY_COST)
    return Drafter({**sources, "auto": auto})


def serve(
    drafter: Drafter, truth: list[int], prompt: int, k: int = 4
) -> list[tuple[str, int, int]]:
    """Decode `truth` after its first `prompt` tokens as a greedy target would, one
    verification per step with auto's drafts: (source, drafted, accepted) per step."""
    committed, sent, steps = prompt, 0, []
    while committed < len(truth):
        item = DraftItem("r", sent, tuple(truth[sent:committed]), k, Mode.AUTO)
        (reply,) = drafter.draft([item])
        sent = committed
        accepted = common_prefix(reply.tokens, truth[committed:])
        steps.append((reply.source, len(reply.tokens), accepted))
        committed = min(len(truth), committed + accepted + 1)
    return steps


def by_source(steps):
    counts = {}
    for source, drafted, _ in steps:
        if drafted:
            counts[source] = counts.get(source, 0) + 1
    return counts


def test_a_copy_heavy_request_drafts_from_prompt_lookup():
    passage = list(range(100, 140))
    truth = passage + [7] + passage  # the answer copies the prompt
    steps = serve(auto_drafter(Guesser(truth, right_every=3)), truth, prompt=len(passage) + 1)
    counts = by_source(steps)
    assert counts.get("ngram", 0) + counts.get("suffix", 0) > 3 * counts.get("eagle", 0)
    accepted = sum(a for _, _, a in steps)
    assert accepted >= 0.7 * len(passage)  # most of the copy came from drafts


def test_a_free_form_request_drafts_from_the_head():
    truth = list(range(1000, 1200))  # nothing repeats: no lookup ever matches
    steps = serve(auto_drafter(Guesser(truth, right_every=1)), truth, prompt=8)
    assert by_source(steps) == {"eagle": len([s for s in steps if s[1]])}
    assert sum(a for _, _, a in steps) > 0.7 * (len(truth) - 8)


def test_nothing_is_drafted_when_nothing_pays_but_a_probe():
    truth = list(range(1000, 1400))
    steps = serve(auto_drafter(Guesser(truth, right_every=0)), truth, prompt=8)
    drafted = [d for _, d, _ in steps[20:]]  # once its record has learnt
    assert max(drafted) == 1  # probes only: one token
    assert 0 < sum(drafted) <= len(drafted) / PROBE_EVERY + 1


def test_a_wrong_lookup_gives_way_to_the_head_within_a_request():
    # the prompt repeats a phrase, the answer diverges from it every time: matches mislead
    phrase = [5, 6, 7, 8]
    answer = []
    for i in range(40):
        answer += [5, 6, 200 + i, 300 + i]
    truth = phrase * 3 + answer
    drafter = auto_drafter(Guesser(truth, right_every=1))
    steps = serve(drafter, truth, prompt=12)
    late = by_source(steps[len(steps) // 2 :])
    assert late.get("eagle", 0) > late.get("ngram", 0) + late.get("suffix", 0)


def test_predrafted_blocks_name_their_source():
    passage = list(range(100, 120))
    truth = passage + [7] + passage
    drafter = auto_drafter()
    history = tuple(truth[:25])
    drafter.draft([DraftItem("r", 0, history, 4, Mode.AUTO)])
    block = tuple(truth[25:29])
    item = DraftItem("r", len(history), (), 4, Mode.AUTO, block=block)
    (reply,) = drafter.predraft([item], PredraftPlan(outcomes=4, fanout=2, time_s=1.0))
    all_accepted = (len(block), truth[29])
    ahead = reply.blocks[all_accepted]  # as long as a fresh record says pays
    assert ahead and ahead == tuple(truth[30 : 30 + len(ahead)])
    assert set(reply.sources) == set(reply.blocks)
    assert set(reply.sources.values()) <= {"ngram", "suffix"}


def test_the_session_counts_drafts_by_source():
    transport = LocalTransport()
    transport.drafters = [auto_drafter()]
    session = session_for(transport)
    session.register("a", RequestSpec(Mode.AUTO, 3))
    passage = [1, 2, 3, 4, 5, 6]
    tokens = passage + [9] + passage[:1]
    (draft,) = session.propose(["a"], [len(tokens)], [tokens])
    assert draft == [2, 3, 4]
    tokens += [2, 3, 8]  # two accepted, then the target's own token
    session.propose(["a"], [len(tokens)], [tokens])
    stats = session.release("a")
    ((source, counts),) = stats.sources.items()
    assert source in ("ngram", "suffix")
    assert (counts.draft_tokens, counts.accepted_tokens) == (3, 2)
