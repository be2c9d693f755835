"""Chi-square tests for the sampling tests (no scipy here: torch's regularised incomplete gamma
gives the chi-square tail)."""

from __future__ import annotations

import torch

MIN_EXPECTED = 5.0  # categories expected less often are pooled, as the chi-square needs


def chi_square_tail(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square with df degrees of freedom."""
    if df <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(statistic / 2.0)))


def chi_square_p(observed: torch.Tensor, probabilities: torch.Tensor) -> float:
    """Goodness of fit of counts to a distribution: Pearson's chi-square p-value, categories
    expected fewer than MIN_EXPECTED times pooled; 0 if a count falls where p is 0."""
    observed, probabilities = observed.double(), probabilities.double()
    if bool(((probabilities == 0) & (observed > 0)).any()):
        return 0.0
    expected = probabilities * observed.sum()
    return _pearson([observed], [expected])


def homogeneity_p(a: dict[int, int], b: dict[int, int]) -> float:
    """Two samples, one distribution? Pearson's chi-square test of homogeneity on the 2 x tokens
    table, tokens expected fewer than MIN_EXPECTED times in either sample pooled."""
    tokens = sorted(set(a) | set(b))
    table = torch.tensor([[a.get(t, 0) for t in tokens], [b.get(t, 0) for t in tokens]])
    table = table.double()
    totals = table.sum(1, keepdim=True)
    expected = totals * table.sum(0, keepdim=True) / table.sum()
    return _pearson(list(table), list(expected))


def _pearson(observed: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """Pearson's chi-square p-value over one row (goodness of fit) or two rows (homogeneity)
    of observed and expected counts per category: df = categories - 1 either way."""
    o, e = torch.stack(observed), torch.stack(expected)
    order = e.min(0).values.argsort(descending=True)
    o, e = o[:, order], e[:, order]
    kept = int((e.min(0).values >= MIN_EXPECTED).sum())
    if kept < len(order):  # pool the rare tail; too rare a pool joins the rarest kept category
        if float(e[:, kept:].sum(1).min()) < MIN_EXPECTED:
            kept -= 1
        if kept < 1:
            return 1.0
        o = torch.cat([o[:, :kept], o[:, kept:].sum(1, keepdim=True)], 1)
        e = torch.cat([e[:, :kept], e[:, kept:].sum(1, keepdim=True)], 1)
    statistic = float(((o - e) ** 2 / e).sum())
    return chi_square_tail(statistic, o.shape[1] - 1)
