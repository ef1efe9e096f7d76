"""How much of θ ± εz survives the cast to a 16-bit parameter dtype, and how biased the
two-point estimate c becomes; rounding to nearest against stochastic rounding.

    python -m benchmarks.bf16_perturbation

f(θ) = ⟨g, θ⟩ is linear, so the exact estimate is c = ⟨g, z⟩ and the bias of the computed ĉ is
the regression slope Σ ĉ c / Σ c² − 1 over many directions z (zojax's Gaussian sampler).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zojax import perturb as P

D, N = 1024, 10000


def measure(weights: str, dtype, eps: float, rounding: str) -> tuple[float, float, float]:
    """(share of elements unperturbed by +εz, slope of ĉ on c, corr(ĉ, c))."""
    rng = np.random.default_rng(0)
    base = 1.0 + 0.1 * rng.normal(size=D) if weights == "near 1" else 0.02 * rng.normal(size=D)
    theta = {"w": jnp.asarray(base, dtype)}
    g = jnp.asarray(rng.normal(size=D), jnp.float32)
    sampler, key = P.Gaussian(), P.as_key(0)

    @jax.jit
    def one(counter):
        plus = P.perturb(theta, sampler, key, counter, eps, rounding=rounding)["w"]
        minus = P.perturb(theta, sampler, key, counter, -eps, rounding=rounding)["w"]
        c_hat = jnp.dot(g, plus.astype(jnp.float32) - minus.astype(jnp.float32)) / (2 * eps)
        c = jnp.dot(g, sampler(P.leaf_key(key, "w"), counter, (D,)))
        return jnp.mean(plus == theta["w"]), c_hat, c

    same, c_hat, c = (np.asarray(x, np.float64) for x in jax.lax.map(one, jnp.arange(N)))
    return same.mean(), (c_hat @ c) / (c @ c), np.corrcoef(c_hat, c)[0, 1]


def main():
    print(f"{D} weights, {N} directions; f linear, so c = <g, z> exactly")
    print(f"{'dtype':9} {'weights':8} {'eps':6} {'rounding':10} {'unperturbed':>11} {'c scale':>8} {'corr':>6}")
    for dtype in (jnp.bfloat16, jnp.float16):
        for weights in ("near 1", "N(0,.02)"):
            for eps in (1e-3, 1e-2):
                for rounding in P.ROUNDINGS:
                    same, slope, corr = measure(weights, dtype, eps, rounding)
                    print(f"{jnp.dtype(dtype).name:9} {weights:8} {eps:<6g} {rounding:10} {same:11.1%} {slope:8.3f} {corr:6.3f}")


if __name__ == "__main__":
    main()
