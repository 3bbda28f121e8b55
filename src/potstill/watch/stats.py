"""The drift statistics: pure functions over embeddings, label lists and escalation flags.

- ``mmd_test``: two-sample kernel test (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012):
  unbiased MMD^2 with an RBF kernel whose bandwidth is the median pairwise distance of the pooled
  sample, and a permutation p-value. The effect size is MMD = sqrt(max(MMD^2, 0)): with a kernel
  bounded in [0, 1] it lies in [0, sqrt 2] whatever the sample sizes (the p-value alone shrinks
  with n and would page on a shift too small to matter). Its estimate is noisier the smaller the
  window, so a threshold on the estimate let a shift below it through at 50 (a true MMD of 0.07
  cleared 0.1 in 12% of windows) and never at 500: the flag fell as data grew. ``effect_lower`` is
  a one-sided 95% lower bound of MMD (the U-statistic's first-order variance, 4 Var(h_x) / m +
  4 Var(h_y) / n), and a threshold on it flags a shift below it at no window size, one above it
  the more often the larger the window.
- ``label_test``: G-test of homogeneity on the 2 x K table of label counts (live vs reference),
  with total variation distance as the effect size; its p-value by permutation where asked (the
  chi-square tail is slightly liberal at a window of 50: 1.4% of null windows under p < 0.01).
- ``escalation_trend``: the share escalated per consecutive sub-window and its least-squares slope.
- ``escalation_p_value``: one-sided exact test that the window escalates more often than val did.
- ``holm``: Holm's step-down adjustment of one run's p-values, so that a run pages under no drift
  at most alpha of the time, not alpha per check.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch


Z95 = 1.6449  # the standard normal's 95th percentile: a one-sided 95% bound


def rbf_kernel(z: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(N, N) kernel exp(-||a-b||^2 / (2 s^2)) over the rows of ``z`` (N, H), and s, the median
    pairwise distance (the median heuristic; 1.0 when every row is identical)."""
    d2 = torch.cdist(z, z).pow(2)
    n = z.shape[0]
    off = d2[~torch.eye(n, dtype=torch.bool)]
    med = float(off.median().sqrt()) if off.numel() else 0.0
    s = med if med > 0 else 1.0
    return torch.exp(-d2 / (2 * s * s)), s


def _mmd2(u: torch.Tensor, k0: torch.Tensor, rowsum: torch.Tensor, total: float, m: int, n: int) -> torch.Tensor:
    """Unbiased MMD^2 for each assignment row of ``u`` (B, N): 1 marks the first sample's members.

    With r = K0 u (K0: the kernel with a zero diagonal, so i == j pairs drop out):
    sum_xx = u.r, sum_xy = u.rowsum - u.r, sum_yy = total - 2 u.rowsum + u.r."""
    ur = (u * (u @ k0)).sum(1)
    urow = u @ rowsum
    xx, xy, yy = ur, urow - ur, total - 2 * urow + ur
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)


def mmd_test(x: torch.Tensor, y: torch.Tensor, permutations: int = 1000, seed: int = 0) -> dict[str, float]:
    """Two-sample MMD test of x (m, H) against y (n, H); m, n >= 2.

    Returns mmd2 (unbiased), effect (sqrt of max(mmd2, 0)), p_value ((1 + #perm >= observed) /
    (1 + permutations), never 0), bandwidth, and the null's mean and 95th percentile of MMD."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"mmd_test needs at least 2 rows per sample, got {m} and {n}")
    z = torch.cat([x, y]).double()
    k, s = rbf_kernel(z)
    k0 = k - torch.diag(torch.diagonal(k))
    rowsum = k0.sum(1)
    total = float(rowsum.sum())
    observed = torch.zeros(1, m + n, dtype=torch.float64)
    observed[0, :m] = 1
    mmd2 = float(_mmd2(observed, k0, rowsum, total, m, n)[0])
    g = torch.Generator().manual_seed(seed)
    null = []
    # Chunks of 250 permutations: a (250, N) @ (N, N) product, ~50 MB at N = 5,000.
    for start in range(0, permutations, 250):
        b = min(250, permutations - start)
        idx = torch.argsort(torch.rand(b, m + n, generator=g), dim=1)[:, :m]
        u = torch.zeros(b, m + n, dtype=torch.float64).scatter_(1, idx, 1.0)
        null.append(_mmd2(u, k0, rowsum, total, m, n))
    null_t = torch.cat(null)
    p = (1 + int((null_t >= mmd2 - 1e-12).sum())) / (1 + permutations)
    null_effect = null_t.clamp(min=0).sqrt()
    # Each point's share of MMD^2 (Hoeffding's projection): its mean kernel to its own sample minus to the other.
    hx = k0[:m, :m].sum(1) / (m - 1) - k0[:m, m:].mean(1)
    hy = k0[m:, m:].sum(1) / (n - 1) - k0[:m, m:].mean(0)
    sd = math.sqrt(4 * float(hx.var()) / m + 4 * float(hy.var()) / n)
    return {
        "mmd2": mmd2, "effect": math.sqrt(max(mmd2, 0.0)), "effect_lower": math.sqrt(max(mmd2 - Z95 * sd, 0.0)),
        "mmd2_sd": sd, "p_value": p, "bandwidth": s,
        "null_effect_mean": float(null_effect.mean()), "null_effect_p95": float(null_effect.quantile(0.95)),
        "n_live": m, "n_reference": n,
    }


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square(df): the regularised upper incomplete gamma Q(df/2, x/2)."""
    if x <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(x / 2, dtype=torch.float64)))


def _g(live_counts: torch.Tensor, col: torch.Tensor, na: int, nb: int) -> torch.Tensor:
    """G statistic of each row of live counts (B, K) against the column totals ``col`` (K)."""
    n = na + nb
    out = torch.zeros(live_counts.shape[0], dtype=torch.float64)
    for obs, rowtotal in ((live_counts, na), (col - live_counts, nb)):
        exp = rowtotal * col / n
        out += torch.where(obs > 0, 2 * obs * torch.log(obs.clamp(min=1) / exp.clamp(min=1e-300)), 0.0).sum(-1)
    return out


def label_test(live: list[str], reference: list[str], permutations: int | None = None, seed: int = 0) -> dict[str, Any]:
    """G-test that two label samples share one distribution, and their total variation distance.

    Categories are the union of both samples' values (an unparseable answer is its own category);
    categories absent from both carry no information and are not in the table. ``permutations``: the
    p-value is (1 + #permuted G >= G) / (1 + permutations), labels shuffled between the two samples
    (exact level, as the MMD's); None: the chi-square tail."""
    if not live or not reference:
        raise ValueError("label_test needs at least one label in each sample")
    a, b = Counter(live), Counter(reference)
    cats = sorted(set(a) | set(b))
    na, nb = len(live), len(reference)
    col = torch.tensor([a[c] + b[c] for c in cats], dtype=torch.float64)
    g = float(_g(torch.tensor([[a[c] for c in cats]], dtype=torch.float64), col, na, nb)[0])
    df = len(cats) - 1
    if df == 0:
        p = 1.0
    elif permutations is None:
        p = chi2_sf(g, df)
    else:
        codes = {c: i for i, c in enumerate(cats)}
        pooled = torch.tensor([codes[x] for x in [*live, *reference]])
        gen, null = torch.Generator().manual_seed(seed), []
        for start in range(0, permutations, 250):
            rows = min(250, permutations - start)
            idx = torch.argsort(torch.rand(rows, na + nb, generator=gen), dim=1)[:, :na]
            counts = torch.zeros(rows, len(cats), dtype=torch.float64).scatter_add_(
                1, pooled[idx], torch.ones(rows, na, dtype=torch.float64))
            null.append(_g(counts, col, na, nb))
        p = (1 + int((torch.cat(null) >= g - 1e-9).sum())) / (1 + permutations)
    share_live = {c: a[c] / na for c in cats}
    share_ref = {c: b[c] / nb for c in cats}
    tv = 0.5 * sum(abs(share_live[c] - share_ref[c]) for c in cats)
    return {"g": g, "df": df, "p_value": p, "tv": tv,
            "live": share_live, "reference": share_ref, "n_live": na, "n_reference": nb}


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (Holm 1979): the i-th smallest of m times (m - i + 1), kept
    non-decreasing and at most 1. Flagging where the adjusted p <= alpha keeps the chance that any of
    the m checks flags under no drift at most alpha (Bonferroni's bound, and never less powerful)."""
    out, running, m = {}, 0.0, len(p_values)
    for i, name in enumerate(sorted(p_values, key=lambda k: p_values[k])):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        out[name] = running
    return out


def escalation_trend(escalated: list[bool], bins: int = 5) -> dict[str, Any]:
    """Share escalated overall and per consecutive sub-window (time order), and the least-squares
    slope of the per-window share against the window's middle request, per 100 requests."""
    n = len(escalated)
    if n == 0:
        raise ValueError("escalation_trend needs at least one request")
    bins = max(1, min(bins, n))
    edges = [round(i * n / bins) for i in range(bins + 1)]
    shares, mids = [], []
    for lo, hi in zip(edges, edges[1:]):
        shares.append(sum(escalated[lo:hi]) / (hi - lo))
        mids.append((lo + hi - 1) / 2)
    slope = 0.0
    if bins > 1:
        mx, my = sum(mids) / bins, sum(shares) / bins
        var = sum((x - mx) ** 2 for x in mids)
        slope = 100 * sum((x - mx) * (y - my) for x, y in zip(mids, shares)) / var if var else 0.0
    return {"share": sum(escalated) / n, "per_window": shares, "window_sizes": [hi - lo for lo, hi in zip(edges, edges[1:])],
            "slope_per_100": slope, "n": n}


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def escalation_p_value(k: int, n: int, expected: float, n_expected: int | None = None) -> float:
    """P(a window of n escalates k or more | its rate is val's): one-sided, exact.

    Val's share is itself a sample of ``n_expected`` inputs (calibrated on 50, it is known to about
    +-11 points): with it, Fisher's exact test of the 2 x 2 table (window k of n, val k_val of
    n_expected, k_val = expected * n_expected), X ~ Hypergeometric(n + n_expected, k + k_val, n); a
    fixed margin over val's share alone paged 13% of checks with no drift at 20 val inputs and a
    window of 50. Without ``n_expected`` (a routing.json that does not say it), val's share is taken as
    exact: X ~ Binomial(n, expected). Conservative: never under the chance it bounds."""
    if k <= 0:
        return 1.0
    if not n_expected:
        if expected <= 0:
            return 0.0
        if expected >= 1:
            return 1.0
        terms = [_log_comb(n, x) + x * math.log(expected) + (n - x) * math.log1p(-expected) for x in range(k, n + 1)]
    else:
        k_val = round(expected * n_expected)
        total, hits = n + n_expected, k + k_val
        terms = [_log_comb(hits, x) + _log_comb(total - hits, n - x) - _log_comb(total, n)
                 for x in range(k, min(n, hits) + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))
