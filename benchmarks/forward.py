"""Forward-pass time of SmolLM2-135M: jitted zojax (JAX) against transformers (PyTorch).

Both run the same float32 weights on the same random batch; each is warmed up, then timed
`--runs` times, and the medians are printed with their ratio.

    python benchmarks/forward.py [--batch 16] [--seq 64] [--runs 5] [--torch-threads N]

PyTorch's OpenMP threads degrade sharply when another process holds a core (measured here:
about 3.3 s with 1 thread against 8-12 s with 2 while another job ran), so on a shared
machine compare with `--torch-threads 1` as well.

    python benchmarks/forward.py --attention-baseline [--runs 5] [--dtype bfloat16]

times zojax's forward with `zojax.models.nn.attention` (`jax.nn.dot_product_attention`)
against the same forward with `einsum_attention` below, the hand-written einsum attention it
replaced (kept here as the baseline only), in interleaved rounds; it prints both medians,
their ratio, the largest logit difference, the compiled peak memory of each and the load
average.
"""

import argparse
import tempfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoModelForCausalLM

import zojax.models
import zojax.models.base
from common import Memory, interleaved_medians, mb, median_time, random_batch


def einsum_attention(q, k, v, mask, scale=None):
    """BASELINE ONLY: zojax's former attention (before `jax.nn.dot_product_attention`), einsums in
    the order of torch's CPU SDPA: float32 scores, `exp(scores - max)`, `(weights @ v) / sum`."""
    b, t, n, d = q.shape
    kh = k.shape[2]
    q = q.reshape(b, t, kh, n // kh, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    if scale != 1:
        scores = scores * (d**-0.5 if scale is None else scale)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    out = jnp.einsum("bkgts,bskd->bkgtd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = out / jnp.sum(weights, axis=-1, keepdims=True)
    return jnp.einsum("bkgtd->btkgd", out.astype(v.dtype)).reshape(b, t, n * d)


def attention_baseline(args):
    """zojax's forward with the current attention and with `einsum_attention`, interleaved."""
    model = zojax.models.load_default(dtype=args.dtype)
    ids, mask = random_batch(model.config.vocab_size, args.batch, args.seq)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)

    def compiled(attention=None):
        # The un-jitted forward (`model.apply` is one cached jit), traced afresh for each.
        fn = lambda p, i, m: zojax.models.base.decode(zojax.models.base.graphdef(model.config, p), p, i, m)
        if attention is None:
            return jax.jit(fn).lower(model.params, ids, mask).compile()
        with mock.patch.object(zojax.models.base, "attention", attention):
            return jax.jit(fn).lower(model.params, ids, mask).compile()

    runs = {"dot_product_attention": compiled(), "einsum (baseline)": compiled(einsum_attention)}
    logits = {name: np.asarray(f(model.params, ids, mask)) for name, f in runs.items()}
    medians = interleaved_medians(
        {name: lambda f=f: f(model.params, ids, mask).block_until_ready() for name, f in runs.items()}, args.runs
    )
    new, old = medians.values()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(
        f"SmolLM2-135M forward, batch {args.batch}x{args.seq}, {args.dtype}, median of {args.runs} "
        f"interleaved rounds (jax {jax.__version__} on {jax.devices()[0].platform}; load average {load})"
    )
    for name, f in runs.items():
        print(f"  {name + ':':27s}{medians[name]:.3f} s, compiled peak {mb(Memory.of(f).peak)}")
    print(f"  ratio new / baseline:      {new / old:.3f}")
    print(f"  max |logits difference|:   {np.abs(np.subtract(*logits.values())).max():.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--attention-baseline", action="store_true",
        help="time zojax's attention against the einsum attention it replaced (no PyTorch)",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="with --attention-baseline")
    args = parser.parse_args()
    if args.attention_baseline:
        return attention_baseline(args)
    if args.dtype != "float32":
        parser.error("--dtype is for --attention-baseline; the comparison with transformers is float32")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    model = zojax.models.load_default()
    ids, mask = random_batch(model.config.vocab_size, args.batch, args.seq)

    apply = jax.jit(model.apply)
    jax_s = median_time(lambda: apply(model.params, ids, mask).block_until_ready(), args.runs)

    with tempfile.TemporaryDirectory() as d:
        zojax.models.save_hf(model, model.params, d)
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    with torch.inference_mode():
        logits_hf = hf(input_ids=t_ids, attention_mask=t_mask).logits.numpy()
        torch_s = median_time(lambda: hf(input_ids=t_ids, attention_mask=t_mask), args.runs)
    diff = np.abs(np.asarray(apply(model.params, ids, mask)) - logits_hf).max()

    print(
        f"SmolLM2-135M forward, batch {args.batch}x{args.seq}, float32, median of {args.runs} runs "
        f"(jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads)"
    )
    print(f"  zojax (jax.jit):               {jax_s:.3f} s")
    print(f"  transformers (inference_mode): {torch_s:.3f} s")
    print(f"  ratio jax / torch:             {jax_s / torch_s:.2f}")
    print(f"  max |logits difference|:       {diff:.2e}")


if __name__ == "__main__":
    main()
