"""Exact integrals over a mask-ratio law of functions Σ c_pq · t^p (1 − t)^q.

Given t, every masked estimator's conditional moments are finite sums over mask sizes l of
terms t^l (1 − t)^(n−l) (the Bernoulli(t) mask law) times 1/t, 1/t², 1/(1 − t) ... (the weights).
`TPoly` holds such a sum as a coefficient grid over integer exponents p, q >= −2; `TLaw` is a
law of t made of uniform segments and atoms (what clamping a uniform t to [ε, 1 − ε] gives), and
integrates a TPoly against it in closed form: betainc for p, q >= 0, and for a negative exponent
the identities t^p (1 − t)^q = t^p (1 − t)^(q−1) − t^(p+1) (1 − t)^(q−1) (down to ∫ t^−1 = log,
∫ t^−2 = 1/a − 1/b) and 1 = t + (1 − t) when both are negative. No quadrature: the only error is
float64 rounding. An integral whose segment reaches 0 (or 1) with p <= −1 (or q <= −1) is +inf:
that is how a diverging moment (a 1/t weight with t allowed to reach 0) shows up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import special

OFF = 2  # coefficient index i stands for exponent i − OFF (exponents down to −2)


@lru_cache(maxsize=None)
def int_pq(p: int, q: int, a: float, b: float) -> float:
    """∫_a^b t^p (1 − t)^q dt for integers p, q >= −2 and 0 <= a <= b <= 1 (inf when it diverges)."""
    if b <= a:
        return 0.0
    if p >= 0 and q >= 0:
        return float(special.beta(p + 1, q + 1) * (special.betainc(p + 1, q + 1, b) - special.betainc(p + 1, q + 1, a)))
    if p < 0 and q < 0:  # 1 = t + (1 − t)
        return int_pq(p + 1, q, a, b) + int_pq(p, q + 1, a, b)
    if q < 0:  # reflect t -> 1 − t
        return int_pq(q, p, 1.0 - b, 1.0 - a)
    if a <= 0.0:  # p <= −1 with q >= 0: the integrand behaves like t^p at 0
        return math.inf
    if q == 0:
        return math.log(b / a) if p == -1 else (b ** (p + 1) - a ** (p + 1)) / (p + 1)
    return int_pq(p, q - 1, a, b) - int_pq(p + 1, q - 1, a, b)


def pow_pq(p: int, q: int, t: float) -> float:
    """t^p (1 − t)^q at one point (inf at a pole)."""
    if (t == 0.0 and p < 0) or (t == 1.0 and q < 0):
        return math.inf
    return (t ** p) * ((1.0 - t) ** q)


class TPoly:
    """Σ_pq c[p + OFF, q + OFF] · t^p (1 − t)^q with integer p, q >= −OFF (a square grid)."""

    def __init__(self, coef: np.ndarray):
        self.coef = np.asarray(coef, dtype=np.float64)

    @classmethod
    def zeros(cls, size: int) -> "TPoly":
        return cls(np.zeros((size + OFF + 1, size + OFF + 1)))

    def add_term(self, c: float, p: int, q: int) -> "TPoly":
        """In place: += c · t^p (1 − t)^q (returns self)."""
        self.coef[p + OFF, q + OFF] += c
        return self

    def __add__(self, other: "TPoly") -> "TPoly":
        return TPoly(self.coef + other.coef)

    def scale(self, c: float) -> "TPoly":
        return TPoly(self.coef * c)

    def reflect(self) -> "TPoly":
        """f(1 − t)."""
        return TPoly(self.coef.T.copy())

    def __mul__(self, other: "TPoly") -> "TPoly":
        """Product (exponents add); the result must keep every exponent >= −OFF."""
        a, b = self.coef, other.coef
        n = a.shape[0] + b.shape[0] - 1
        out = np.zeros((n, n))
        for (i, j) in zip(*np.nonzero(a)):
            for (k, m) in zip(*np.nonzero(b)):
                p, q = i + k - OFF, j + m - OFF  # index of exponent (i−OFF)+(k−OFF)
                if p < 0 or q < 0:
                    raise ValueError("TPoly product has an exponent below −2")
                out[p, q] += a[i, j] * b[k, m]
        return TPoly(out)

    def terms(self):
        for i, j in zip(*np.nonzero(self.coef)):
            yield float(self.coef[i, j]), int(i) - OFF, int(j) - OFF

    def integral(self, a: float, b: float) -> float:
        """∫_a^b f(t) dt, exactly (inf where a term with a nonzero coefficient diverges)."""
        return float(sum(c * int_pq(p, q, float(a), float(b)) for c, p, q in self.terms()))

    def __call__(self, t: float) -> float:
        return float(sum(c * pow_pq(p, q, float(t)) for c, p, q in self.terms()))


@dataclass(frozen=True)
class TLaw:
    """A law of t on [0, 1]: uniform segments (a, b, density) plus atoms (t0, mass); masses sum to 1.

    `describe` says, in words, how the law was made (e.g. the clamp that created an atom).
    """

    segments: tuple = ()
    atoms: tuple = ()
    describe: str = ""
    clamp: tuple = field(default=(), compare=False)  # (lo, hi) the estimator clamps t to, if any

    def total(self) -> float:
        return sum((b - a) * d for a, b, d in self.segments) + sum(m for _, m in self.atoms)

    def expect(self, f: TPoly) -> float:
        """E[f(t)] exactly."""
        out = sum(d * f.integral(a, b) for a, b, d in self.segments if b > a)
        return float(out + sum(m * f(t0) for t0, m in self.atoms if m > 0))

    def unclamped(self) -> "TLaw":
        """The same law without the clamp (atoms spread back to uniform density)."""
        segs = [s for s in self.segments]
        atoms = []
        for t0, m in self.atoms:
            d = self.segments[0][2] if self.segments else 1.0
            if self.clamp and t0 == self.clamp[0]:
                lo = t0 - m / d
                segs.append((0.0 if lo < 1e-12 else lo, t0, d))  # the clamp moved [lo, t0) onto t0
            elif self.clamp and t0 == self.clamp[1]:
                hi = t0 + m / d
                segs.append((t0, 1.0 if hi > 1 - 1e-12 else hi, d))
            else:
                atoms.append((t0, m))
        return TLaw(tuple(segs), tuple(atoms), self.describe + " (no clamp)")


def clamped_uniform(lo: float, hi: float, eps_lo: float | None, eps_hi: float | None, what: str) -> TLaw:
    """The law of clamp(U(lo, hi), eps_lo, eps_hi): density 1/(hi − lo) on the clamped range and
    atoms at the clamp points carrying the mass the clamp moved there."""
    d = 1.0 / (hi - lo)
    a = lo if eps_lo is None else max(lo, eps_lo)
    b = hi if eps_hi is None else min(hi, eps_hi)
    atoms = []
    if eps_lo is not None and lo < eps_lo:
        atoms.append((eps_lo, (min(eps_lo, hi) - lo) * d))
    if eps_hi is not None and hi > eps_hi:
        atoms.append((eps_hi, (hi - max(eps_hi, lo)) * d))
    clamp = (eps_lo if eps_lo is not None else -1.0, eps_hi if eps_hi is not None else 2.0)
    return TLaw(((a, b, d),) if b > a else (), tuple(atoms), what, clamp)
