"""Monte Carlo (permutation) estimates of Shapley values, as pure functions over a value function.

A cooperative game is a value function ``v`` over coalitions of ``n`` players; a coalition is a
bool tensor ``active`` of shape (n,), and ``v`` returns a tensor of shape (k,) (k values per
coalition: LRNAS scores clean and FGSM accuracy at once). The Shapley value of player i is

    φ_i = E_π [ v(P_π(i) ∪ {i}) − v(P_π(i)) ],

P_π(i) the players before i in a uniformly random permutation π (Shapley 1953). LRNAS switches
players *off* one by one in permutation order, starting from the grand coalition, and records
each one's marginal *drop* v(S) − v(S \\ {i}); the players still on after i are the players
before i in the reversed permutation, which is again uniform, so the mean drop over random
permutations is an unbiased estimate of φ_i (Castro, Gómez & Tejada 2009).

Truncated Monte Carlo (Ghorbani & Zou 2019, "Data Shapley"): once v(S) is within
``tolerance`` of v(∅) in every component, the players left get marginal 0 without evaluating
v (the drops left sum to v(S) − v(∅), so each permutation's total is off by less than the
tolerance). ``tolerance = 0`` evaluates every coalition.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ValueFn = Callable[[torch.Tensor], torch.Tensor]  # active (n,) bool -> values (k,)


def permutation_marginals(
    value_fn: ValueFn,
    order: torch.Tensor,
    tolerance: float = 0.0,
    *,
    many: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk: int = 16,
) -> torch.Tensor:
    """Marginal drops of one permutation: returns (n, k), row i = v(S ∪ {i}) − v(S).

    ``order`` (n,) is the permutation: players are switched off in this order, starting from
    all on, so S is the set of players after i in ``order``.

    ``many``: ``value_fn`` over a stack of coalitions, (G, n) bool -> (G, k), when the game can
    score several at once (LRNAS: G masked supernets in one forward). The coalitions along the
    permutation do not depend on the values, so they are scored ``chunk`` at a time; the result
    is the one-by-one result (same truncation point), at most ``chunk`` − 1 coalitions past it
    scored and unused.
    """
    n = int(order.numel())
    if many is None:
        chunk = 1

        def many(stack: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.as_tensor(value_fn(a.clone()), dtype=torch.float64) for a in stack])

    removed = order.tolist()

    def coalitions(start: int, stop: int) -> torch.Tensor:
        """S_start .. S_{stop−1}, S_t the coalition with the first t players of ``order`` off."""
        stack = torch.ones(stop - start, n, dtype=torch.bool)
        for r, t in enumerate(range(start, stop)):
            stack[r, removed[:t]] = False
        return stack

    current = torch.as_tensor(many(coalitions(0, 1))[0], dtype=torch.float64)
    out = torch.zeros(n, current.numel(), dtype=torch.float64)
    empty = None
    if tolerance > 0:
        empty = torch.as_tensor(many(torch.zeros(1, n, dtype=torch.bool))[0], dtype=torch.float64)
    scored: list[torch.Tensor] = []  # values of S_t for t = next_t, next_t + 1, ...
    next_t = 1
    for t in range(1, n + 1):
        if empty is not None and bool(((current - empty).abs() < tolerance).all()):
            break  # truncated: the drops left are 0
        if not scored:
            stop = min(n + 1, next_t + chunk)
            scored = list(torch.as_tensor(many(coalitions(next_t, stop)), dtype=torch.float64))
            next_t = stop
        after = scored.pop(0)
        out[removed[t - 1]] = current - after
        current = after
    return out


def sample_marginals(
    value_fn: ValueFn, n_players: int, n_permutations: int, generator: torch.Generator, tolerance: float = 0.0
) -> torch.Tensor:
    """Marginal drops of ``n_permutations`` uniformly random permutations: (n_permutations, n, k)."""
    return torch.stack(
        [
            permutation_marginals(value_fn, torch.randperm(n_players, generator=generator), tolerance)
            for _ in range(n_permutations)
        ]
    )


def monte_carlo_shapley(
    value_fn: ValueFn, n_players: int, n_permutations: int, generator: torch.Generator, tolerance: float = 0.0
) -> torch.Tensor:
    """The permutation estimate of the Shapley values: mean marginal over permutations, (n, k)."""
    return sample_marginals(value_fn, n_players, n_permutations, generator, tolerance).mean(0)


def zscore(x: torch.Tensor, dim: int = -1, correction: int = 0) -> torch.Tensor:
    """(x − mean) / std along ``dim``; std with ``correction`` (0: population std, as LRNAS'
    per-permutation z-scores; 1: sample std); 0 where all values are equal (tested on the values:
    the mean of n equal floats can differ from them by rounding, which would leave a std of
    ~1e-17 and z-scores of ±1 made of rounding error)."""
    mean = x.mean(dim, keepdim=True)
    std = x.std(dim, correction=correction, keepdim=True)
    varies = x.amax(dim, keepdim=True) > x.amin(dim, keepdim=True)
    return torch.where(varies, (x - mean) / torch.where(varies, std, torch.ones_like(std)), torch.zeros_like(x))


def lrnas_values(marginals: torch.Tensor) -> torch.Tensor:
    """LRNAS' contribution value of each player from (n_permutations, n, k) marginal drops:
    z-score each kind of drop over the players within a permutation, add the k z-scores
    (ΔA and ΔR: z(ΔA) + z(ΔR)), mean over permutations. Returns (n,)."""
    return zscore(marginals, dim=1).sum(-1).mean(0)
