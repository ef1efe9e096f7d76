"""Forward-pass time of SmolLM2-135M: jitted zojax (JAX) against transformers (PyTorch).

Both run the same float32 weights on the same random batch; each is warmed up, then timed
`--runs` times, and the medians are printed with their ratio.

    python benchmarks/forward.py [--batch 16] [--seq 64] [--runs 5] [--torch-threads N]

PyTorch's OpenMP threads degrade sharply when another process holds a core (measured here:
about 3.3 s with 1 thread against 8-12 s with 2 while another job ran), so on a shared
machine compare with `--torch-threads 1` as well.
"""

import argparse
import tempfile

import jax
import numpy as np
import torch
from transformers import AutoModelForCausalLM

import zojax.models
from common import median_time, random_batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
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
