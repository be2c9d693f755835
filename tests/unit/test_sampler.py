"""tandem's exact speculative sampler (tandem.plugins.sampler) against vLLM 0.32's own sampling
modules on the CPU, with synthetic logits: every emitted token follows the distribution a plain
decoding step samples from (temperature, top_k, top_p, min_p mixed in one batch, seeded or not),
a seed gives the tokens plain decoding gives, placeholder drafts never fail a step. Also the
vLLM defect the sampler exists for, reproduced in vLLM's own module."""

from __future__ import annotations

import dataclasses
import itertools
import math
import types

import pytest
import torch

pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.platforms import current_platform  # noqa: E402
from vllm.v1.sample.logits_processor import LogitsProcessors  # noqa: E402
from vllm.v1.sample.logits_processor.interface import BatchUpdate  # noqa: E402
from vllm.v1.sample.metadata import SamplingMetadata  # noqa: E402
from vllm.v1.sample.rejection_sampler import RejectionSampler  # noqa: E402
from vllm.v1.sample.sampler import Sampler  # noqa: E402
from vllm.v1.spec_decode.metadata import SpecDecodeMetadata  # noqa: E402

from tandem.plugins import sampler as exact  # noqa: E402
from tests.support.stats import chi_square_p  # noqa: E402

VOCAB = 24
FALSE_ALARM = 0.001  # per test function, split over its comparisons (Bonferroni)

# The CPU stand-ins for vLLM's Triton kernels, as the engine registers them at start.
current_platform.register_triton_kernel_overrides()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: thread start-up would dominate, and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclasses.dataclass(frozen=True)
class Setting:
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None


def target_distribution(logits: torch.Tensor, s: Setting) -> torch.Tensor:
    """What a plain decoding step samples from, computed here independently of vLLM, in vLLM's
    order: temperature, min_p, top_k, top_p."""
    logits = logits.double()
    if s.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(), VOCAB).double()
    z = logits / s.temperature
    p = z.softmax(-1)
    z = z.masked_fill(p < s.min_p * p.max(), -math.inf)
    if s.top_k:
        z = z.masked_fill(z < z.topk(s.top_k).values[-1], -math.inf)
    if s.top_p < 1:
        order = z.argsort()  # ascending: drop the smallest tokens holding at most 1 - top_p
        mass = z[order].softmax(-1).cumsum(-1)
        drop = mass <= 1 - s.top_p
        drop[-1] = False
        z[order[drop]] = -math.inf
    return z.softmax(-1)


class Batch:
    """A batch of requests as vLLM's worker hands it to the rejection sampler: each request with
    its setting and a fixed logits row per position (drafts, then the bonus position)."""

    def __init__(self, settings: list[Setting], drafts: list[list[int]], seed: int = 0) -> None:
        self.settings, self.drafts = settings, drafts
        torch.manual_seed(seed)
        # Peaked enough that drafts of likely tokens are accepted now and then.
        self.logits = [2 * torch.randn(len(d) + 1, VOCAB) for d in drafts]
        self.generators = {
            i: torch.Generator().manual_seed(s.seed)
            for i, s in enumerate(settings)
            if s.seed is not None
        }
        self.min_p = exact.ExtraArgsMinP(
            types.SimpleNamespace(scheduler_config=types.SimpleNamespace(max_num_seqs=len(drafts))),
            torch.device("cpu"),
            False,
        )
        added = [
            (i, SamplingParams(extra_args={exact.MIN_P: s.min_p}), None, [])
            for i, s in enumerate(settings)
        ]
        self.min_p.update_state(BatchUpdate(len(settings), [], added, []))

    def metadata(self) -> tuple[SpecDecodeMetadata, torch.Tensor, SamplingMetadata]:
        counts = [len(d) for d in self.drafts]
        offsets = [0, *itertools.accumulate(n + 1 for n in counts)]
        target = [offsets[i] + j for i, n in enumerate(counts) for j in range(n)]
        spec = SpecDecodeMetadata(
            draft_token_ids=torch.tensor(sum(self.drafts, []), dtype=torch.int32),
            num_draft_tokens=counts,
            cu_num_draft_tokens=torch.tensor(list(itertools.accumulate(counts)), dtype=torch.int32),
            cu_num_sampled_tokens=torch.tensor(offsets[1:], dtype=torch.int32),
            target_logits_indices=torch.tensor(target, dtype=torch.int32),
            bonus_logits_indices=torch.tensor([o - 1 for o in offsets[1:]], dtype=torch.int32),
            logits_indices=torch.arange(offsets[-1], dtype=torch.int32),
        )
        temperature = [s.temperature for s in self.settings]
        top_k = [s.top_k or VOCAB for s in self.settings]  # vLLM's input batch: vocab = off
        top_p = [s.top_p for s in self.settings]
        batch = len(self.settings)
        sampling = SamplingMetadata(
            temperature=torch.tensor(temperature, dtype=torch.float32),
            all_greedy=all(t == 0 for t in temperature),
            all_random=all(t > 0 for t in temperature),
            # As vLLM's input batch: None when no request of the batch uses them.
            top_p=torch.tensor(top_p) if any(p < 1 for p in top_p) else None,
            top_k=torch.tensor(top_k, dtype=torch.int32)
            if any(s.top_k for s in self.settings)
            else None,
            generators=self.generators,
            max_num_logprobs=None,
            no_penalties=True,
            prompt_token_ids=None,
            frequency_penalties=torch.zeros(batch),
            presence_penalties=torch.zeros(batch),
            repetition_penalties=torch.ones(batch),
            output_token_ids=[[] for _ in self.settings],
            allowed_token_ids_mask=None,
            bad_words_token_ids={},
            logitsprocs=LogitsProcessors([self.min_p]),
            spec_token_ids=self.drafts,
        )
        return spec, torch.cat(self.logits), sampling


def exact_sampler() -> RejectionSampler:
    rejection = RejectionSampler(Sampler())
    rejection.forward = types.MethodType(exact.forward, rejection)
    return rejection


def run(rejection: RejectionSampler, batch: Batch, draft_probs=None) -> list[list[int]]:
    spec, logits, sampling = batch.metadata()
    out = rejection(spec, draft_probs, logits, sampling).sampled_token_ids
    return [[t for t in row if t != exact.PLACEHOLDER] for row in out.tolist()]


SETTINGS = [
    Setting(temperature=0),
    Setting(temperature=1.0),
    Setting(temperature=0.7, top_k=5),
    Setting(temperature=1.0, top_p=0.8),
    Setting(temperature=0.7, min_p=0.1),
    Setting(temperature=1.0, top_k=8, top_p=0.9, min_p=0.05, seed=7),
    Setting(temperature=1.0, top_k=6, seed=8),
]


def likely_drafts(batch_logits: list[torch.Tensor], settings: list[Setting]) -> list[list[int]]:
    """Per request: its position's most likely token, except a wrong one at the last position."""
    drafts = []
    for logits, s in zip(batch_logits, settings, strict=True):
        top = [int(target_distribution(row, s).argmax()) for row in logits[:-1]]
        drafts.append(top[:-1] + [(top[-1] + 1) % VOCAB])
    return drafts


def per_position_counts(rows: list[list[int]], drafts: list[int]) -> list[torch.Tensor]:
    """Token counts at each position, among the samples whose drafts before it were accepted."""
    counts = [torch.zeros(VOCAB) for _ in range(len(drafts) + 1)]
    for row in rows:
        for position, token in enumerate(row):
            counts[position][token] += 1
            if position < len(drafts) and token != drafts[position]:
                break
    return counts


@pytest.mark.timeout(300)
def test_every_emitted_token_follows_the_target_distribution():
    """7 requests (greedy, temperature, top_k, top_p, min_p, two seeded mixes) with 3 drafts each,
    verified together 3000 times: at every position reached, the emitted tokens' counts pass a
    chi-square test against the plain decoding distribution; the draft is accepted sometimes and
    rejected sometimes; the greedy request always gets the argmax."""
    template = Batch(SETTINGS, [[0, 0, 0]] * len(SETTINGS))
    batch = Batch(SETTINGS, likely_drafts(template.logits, SETTINGS))
    rejection = exact_sampler()
    trials = 3000
    samples = [[] for _ in SETTINGS]
    for _ in range(trials):
        for i, row in enumerate(run(rejection, batch)):
            samples[i].append(row)
    tests = []
    for i, s in enumerate(SETTINGS):
        counts = per_position_counts(samples[i], batch.drafts[i])
        for position, observed in enumerate(counts):
            expected = target_distribution(batch.logits[i][position], s)
            if s.temperature == 0:
                assert (
                    observed.sum() in (0, trials) and observed[expected.argmax()] == observed.sum()
                )
            elif observed.sum() >= 100:
                tests.append((i, position, observed, expected))
        reached = [int(c.sum()) for c in counts]
        if s.temperature > 0:
            assert reached[1] > 0 and reached[-1] < trials, (s, reached)  # accepted, rejected
    assert len(tests) >= 12
    for i, position, observed, expected in tests:
        p = chi_square_p(observed, expected)
        assert p > FALSE_ALARM / len(tests), (SETTINGS[i], position, p)


@pytest.mark.timeout(120)
def test_a_seed_gives_the_tokens_plain_decoding_gives():
    """A seeded request's n-th output token uses its generator's n-th draw, as in plain
    decoding: whatever the drafts (right, wrong, placeholders, none), the tokens emitted equal
    plain decoding's, and the generator ends where plain decoding leaves it."""
    s = Setting(temperature=1.0, top_k=10, top_p=0.95, min_p=0.02, seed=123)
    plain_sampler = Sampler()
    logits = Batch([s], [[0, 0, 0]]).logits[0]
    plain, generator = [], torch.Generator().manual_seed(s.seed)
    for row in logits:  # plain decoding: one vLLM sampling step per position
        one = Batch([s], [[]])
        one.logits = [row[None]]
        one.generators = {0: generator}
        _, _, sampling = one.metadata()
        plain.append(int(plain_sampler(row[None].clone(), sampling).sampled_token_ids))
    after_plain = generator.get_state()
    rejection = exact_sampler()
    wrong = (plain[1] + 1) % VOCAB
    for drafts, emits in ((plain[:3], 4), ([plain[0], wrong, 0], 2), ([-1, -1, -1], 1)):
        batch = Batch([s], [drafts])
        batch.logits = [logits]
        (emitted,) = run(rejection, batch)
        assert emitted == plain[:emits], (drafts, emitted, plain)
        replay = torch.Generator().manual_seed(s.seed)
        for _ in emitted:  # the generator moved by one plain step per emitted token
            torch.randint(0, 2**31, (1,), generator=replay)
        assert torch.equal(batch.generators[0].get_state(), replay.get_state())
    assert torch.equal(batch_state_after_all_accepted(s, logits, plain), after_plain)


def batch_state_after_all_accepted(s: Setting, logits: torch.Tensor, plain: list[int]):
    batch = Batch([s], [plain[:3]])
    batch.logits = [logits]
    run(exact_sampler(), batch)
    return batch.generators[0].get_state()


@pytest.mark.timeout(120)
def test_placeholder_drafts_beside_top_k_never_fail_the_step():
    """Issue 17, defect 1, at the sampler: a new request padded with placeholder drafts
    ([-1, -1, -1, -1]) beside a temperature 1, top_k 40 request and a request without drafts:
    every step succeeds, the padded request emits one token, from its own distribution."""
    settings = [Setting(temperature=0), Setting(temperature=1.0, top_k=4), Setting(temperature=0.7)]
    batch = Batch(settings, [[-1, -1, -1, -1], [3, 1, 4, 1], []])
    rejection = exact_sampler()
    firsts = torch.zeros(VOCAB)
    for _ in range(200):
        rows = run(rejection, batch)
        assert len(rows[0]) == 1 and rows[0][0] == int(batch.logits[0][0].argmax())
        assert len(rows[2]) == 1
        firsts[rows[1][0]] += 1
    assert int((firsts > 0).sum()) <= 4  # top_k held at the first position


@pytest.mark.timeout(120)
def test_draft_probabilities_follow_leviathan():
    """Drafts drawn from a draft distribution q, verified with q: the emitted first token
    follows the target distribution (chi-square), whatever q is."""
    s = Setting(temperature=0.8, top_k=12)
    batch = Batch([s] * 200, [[0]] * 200, seed=3)
    for logits in batch.logits:
        logits.copy_(batch.logits[0])
    torch.manual_seed(5)
    q = torch.randn(VOCAB).softmax(-1)
    rejection = exact_sampler()
    observed, accepted = torch.zeros(VOCAB), 0
    for _ in range(20):
        batch.drafts = [[int(torch.multinomial(q, 1))] for _ in batch.drafts]
        for row, draft in zip(run(rejection, batch, q.repeat(200, 1)), batch.drafts, strict=True):
            observed[row[0]] += 1
            accepted += row[0] == draft[0]
    expected = target_distribution(batch.logits[0][0], s)
    assert 0 < accepted < 4000
    assert chi_square_p(observed, expected) > FALSE_ALARM


def test_vllm_032_cpu_expand_kernel_drops_its_output():
    """Why tandem's sampler exists (docs/known-vllm-issues.md): vLLM 0.32's CPU stand-in for the
    Triton `expand_kernel` (vllm/utils/cpu_triton_utils.py, `_expand_kernel_impl`) converts a
    float32 or int32 output to an int64 copy, fills the copy and drops it. The rejection sampler
    expands temperature, top_k and top_p with it, into uninitialised tensors. If this fails,
    vLLM has fixed it: revisit tandem.plugins.sampler.WRITTEN_FOR."""
    from vllm.utils import cpu_triton_utils

    cu = torch.tensor([2, 4], dtype=torch.int32)
    for values in (torch.tensor([0.7, 1.0]), torch.tensor([40, 49152], dtype=torch.int32)):
        out = torch.zeros(4, dtype=values.dtype)
        cpu_triton_utils._expand_kernel_impl(out, values, cu, 0, 1)
        assert out.tolist() == [0, 0, 0, 0]  # should be values repeated twice each
