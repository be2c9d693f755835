"""SuffixDecoding (Oliaro et al., 2024): draft from suffix trees of past text, sized by frequency.

Each request has a depth-bounded suffix trie over its own prompt and output; one global trie
holds the outputs of recently finished requests, within a token budget. To draft, the longest
suffix of the request's context (up to `max_pattern` tokens) that occurred before with a
continuation is found, then the most frequent child is followed while the running probability
(product of child count / sibling total) stays at or above `min_prob`. The draft is thus as long
as the evidence supports: a continuation seen every time gives k tokens, a contested one few or
none. Of the two tries, the draft with the larger expected accepted length (the sum of the
running probabilities) wins.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tandem.speculation.candidates import Candidates
from tandem.speculation.source import DrafterSetup, DraftSource, History


class Node:
    """A trie node: the substring spelled by the path to it, and how often it occurred."""

    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.children: dict[int, Node] = {}
        self.count = 0


@dataclass(frozen=True)
class TriePath:
    tokens: list[int]
    score: float  # expected accepted tokens: the sum of the running probabilities


class SuffixTrie:
    """Every substring of the inserted sequences up to `max_depth` tokens, with counts."""

    def __init__(self, max_depth: int) -> None:
        if max_depth < 2:
            raise ValueError(f"max_depth must be >= 2, got {max_depth}")
        self.max_depth = max_depth
        self.root = Node()

    def add(self, active: list[Node], token: int) -> list[Node]:
        """Append `token` to a sequence whose open suffixes are the nodes `active` (the root
        first, then ever longer suffixes): O(max_depth). Returns the new open suffixes."""
        opened = [self.root]
        for node in active[: self.max_depth]:
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = Node()
            child.count += 1
            opened.append(child)
        return opened

    def remove(self, tokens: Sequence[int]) -> None:
        """Undo `add` over a whole sequence: decrement its substrings, prune empty nodes."""
        for start in range(len(tokens)):
            node = self.root
            for token in tokens[start : start + self.max_depth]:
                child = node.children[token]
                child.count -= 1
                if child.count == 0:
                    del node.children[token]
                    break
                node = child

    def find(self, context: Sequence[int], max_pattern: int, room: int = 1) -> Node | None:
        """The node of the longest suffix of `context` (at most `max_pattern` tokens, and short
        enough to leave `room` tokens of depth for the draft) that has occurred with a
        continuation."""
        longest = min(max_pattern, self.max_depth - max(1, room), len(context))
        for n in range(longest, 0, -1):
            node = self.root
            for token in context[len(context) - n :]:
                node = node.children.get(token)
                if node is None:
                    break
            if node is not None and node.children:
                return node
        return None


def follow(node: Node | None, k: int, min_prob: float) -> TriePath:
    """The greedy path of most frequent children while the running probability holds."""
    tokens: list[int] = []
    prob = 1.0
    score = 0.0
    while node is not None and node.children and len(tokens) < k:
        total = sum(child.count for child in node.children.values())
        token, child = max(node.children.items(), key=lambda item: item[1].count)
        prob *= child.count / total
        if prob < min_prob:
            break
        tokens.append(token)
        score += prob
        node = child
    return TriePath(tokens, score)


class RequestSuffixes:
    """One request's trie over its committed tokens, extended one token at a time."""

    def __init__(self, max_depth: int) -> None:
        self.trie = SuffixTrie(max_depth)
        self.tokens: list[int] = []
        self._active: list[Node] = [self.trie.root]

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self._active = self.trie.add(self._active, token)
            self.tokens.append(token)


class GlobalSuffixes:
    """Outputs of recently finished requests, at most `max_tokens` in all (oldest evicted)."""

    def __init__(self, max_depth: int, max_tokens: int) -> None:
        self.trie = SuffixTrie(max_depth)
        self.max_tokens = max_tokens
        self.size = 0
        self._outputs: deque[list[int]] = deque()

    def add(self, output: Sequence[int]) -> None:
        output = list(output)[-self.max_tokens :] if self.max_tokens > 0 else []
        if not output:
            return
        while self.size + len(output) > self.max_tokens:
            oldest = self._outputs.popleft()
            self.trie.remove(oldest)
            self.size -= len(oldest)
        active = [self.trie.root]
        for token in output:
            active = self.trie.add(active, token)
        self._outputs.append(output)
        self.size += len(output)


class SuffixSource(DraftSource):
    """Mode `suffix`: drafts for a request from its own trie and the shared trie of recent
    outputs (every finished request's, whatever its mode), whichever scores better."""

    name = "suffix"

    def __init__(
        self,
        max_depth: int = 16,
        max_pattern: int = 8,
        min_prob: float = 0.1,
        global_tokens: int = 100_000,
    ) -> None:
        self.max_depth = max_depth  # the tries' depth: the longest pattern plus the longest draft
        self.max_pattern = max_pattern
        self.min_prob = min_prob
        self.shared = GlobalSuffixes(max_depth, global_tokens)

    @classmethod
    def build(cls, setup: DrafterSetup, built: Mapping[str, DraftSource]) -> SuffixSource:
        suffix = setup.config.drafters.suffix
        return cls(suffix.max_depth, suffix.max_pattern, suffix.min_prob, suffix.global_tokens)

    def observe(self, history: History, new: Sequence[int], candidates: Candidates) -> None:
        own = history.state.get(self.name)
        if own is not None:
            own.extend(new)

    def propose(self, history: History, extra: Sequence[int], k: int) -> list[int]:
        """`extra`: tokens after the committed ones that are not committed yet (a block under
        verification, when pre-drafting); they take part in the match only."""
        return self.path(history, extra, k).tokens

    def path(self, history: History, extra: Sequence[int], k: int) -> TriePath:
        """The draft with its score (expected accepted tokens by the tries' counts)."""
        if k <= 0:
            return TriePath([], 0.0)
        own = history.state.get(self.name)
        if own is None:  # built on the request's first suffix draft
            own = history.state[self.name] = RequestSuffixes(self.max_depth)
            own.extend(history.tokens)
        context = [*own.tokens[len(own.tokens) - self.max_pattern :], *extra]
        mine = follow(own.trie.find(context, self.max_pattern, k), k, self.min_prob)
        other = follow(self.shared.trie.find(context, self.max_pattern, k), k, self.min_prob)
        return mine if mine.score >= other.score else other

    def release(self, history: History) -> None:
        """The request's output joins the recent outputs other requests draw on."""
        self.shared.add(history.output)
