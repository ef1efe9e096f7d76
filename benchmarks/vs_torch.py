"""zojax's jitted MeZO and LOZO steps against a PyTorch implementation of MeZO's reference step,
on SmolLM2-135M with the same float32 weights, batch and loss.

The PyTorch step is the MeZO trainer's loop over transformers' LlamaForCausalLM under
`torch.inference_mode()`: with `torch.manual_seed(seed)` before each pass over the named
parameters, z drawn per parameter by `torch.normal(0, 1, size=p.size())`,

    p += eps z (all), forward;  p -= 2 eps z (all), forward;  p += eps z (all);
    c = (f+ - f-) / 2 eps;  reseed, p -= lr c z (all).

The loss on both sides is the next-token cross-entropy on random token ids. All steps are
warmed up once, then timed in interleaved rounds (one step of each per round, so a change of
load on a shared machine hits all of them alike); medians of `--runs` rounds are printed with
the speed-ups torch / zojax. The zojax steps pass one copy of the parameters to each other.

    python benchmarks/vs_torch.py [--batch 16] [--seq 64] [--runs 5] [--torch-threads 2 1] \
        [--optimizers mezo lozo] [--samplers gaussian hash]

PyTorch's OpenMP threads degrade sharply when another process holds a core, so the reference
is timed once per `--torch-threads` value (default: torch's own thread count, then 1); each row
names its thread count. Memory ("RSS growth") is how far the resident set grows above its level
before one extra, untimed step of each, sampled every 2 ms (see `rss_growth`): the step's
buffers beyond the parameters both sides already hold.
"""

import argparse
import ctypes
import sys
import tempfile
import threading
import time

import jax
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import zojax.models
from common import (
    SAMPLERS,
    SharedSteps,
    compile_step,
    environment,
    interleaved_medians,
    lm_loss,
    mb,
    random_batch,
    table,
    zo_optimizer,
    zo_step,
)

GOAL = 1.3  # zojax's MeZO step at least this many times faster than the reference


class TorchMeZO:
    """MeZO's reference step (Malladi et al. 2023, Algorithm 1) on a torch model, in place."""

    def __init__(self, model, lr: float, eps: float):
        self.model, self.lr, self.eps = model, lr, eps
        self.params = [p for _, p in model.named_parameters()]  # tied weights appear once
        self.count = 0

    def _add_z(self, seed: int, scale: float):
        torch.manual_seed(seed)
        for p in self.params:
            z = torch.normal(mean=0, std=1, size=p.size(), dtype=p.dtype)
            p.add_(z, alpha=scale)

    def loss(self, ids, mask):
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()

    @torch.inference_mode()
    def step(self, ids, mask):
        seed, self.count = self.count, self.count + 1
        self._add_z(seed, self.eps)
        f_plus = self.loss(ids, mask)
        self._add_z(seed, -2 * self.eps)
        f_minus = self.loss(ids, mask)
        self._add_z(seed, self.eps)
        c = (f_plus - f_minus) / (2 * self.eps)
        self._add_z(seed, -self.lr * c)


class PeakRSS:
    """The process's peak resident set size, sampled by a background thread every `interval` s."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self.lock = interval, 0, threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def reset(self) -> int:
        with self.lock:
            self.peak = self.now()
            return self.peak

    def _run(self):
        while True:
            with self.lock:
                self.peak = max(self.peak, self.now())
            time.sleep(self.interval)


def rss_growth(runners: dict) -> dict:
    """{name: bytes} the resident set grows by during one more call of each runner. glibc is
    first told to give every block of 128 KiB or more its own mapping, returned when freed, and
    to release its free memory before each call, so the growth counts the step's live buffers.
    Empty if glibc is not there. Done after the timing, which these settings would slow down."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, fixed (no longer adapted upwards)
    except (OSError, AttributeError):
        return {}
    rss, growth = PeakRSS(), {}
    for name, fn in runners.items():
        libc.malloc_trim(0)
        before = rss.reset()
        fn()
        time.sleep(0.5)  # buffers of the step may be freed shortly after it returns
        growth[name] = rss.peak - before
    return growth


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, nargs="+", help="thread counts for the reference (default: torch's, 1)")
    parser.add_argument("--optimizers", nargs="+", choices=("mezo", "lozo"), default=["mezo", "lozo"])
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--lr", type=float, default=1e-7)
    parser.add_argument("--eps", type=float, default=1e-3)
    args = parser.parse_args()
    threads = args.torch_threads or list(dict.fromkeys([torch.get_num_threads(), 1]))

    model = zojax.models.load_default()
    ids, mask = random_batch(model.config.vocab_size, args.batch, args.seq)
    loss = lm_loss(model.apply)
    with tempfile.TemporaryDirectory() as d:
        zojax.models.save_hf(model, model.params, d)
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval().requires_grad_(False)
    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    reference = TorchMeZO(hf, args.lr, args.eps)
    with torch.inference_mode():
        losses = float(jax.jit(loss)(model.params, ids, mask)), reference.loss(t_ids, t_mask)

    runners, shared = {}, SharedSteps(model.params, ids, mask)
    for name in args.optimizers:
        for sampler in args.samplers:
            tx = zo_optimizer(name, sampler, model.stacked, learning_rate=args.lr)
            compiled = compile_step(zo_step(tx, loss), model.params, tx.init(model.params), ids, mask)
            runners[f"zojax {name} / {sampler}"] = shared.add(compiled, tx.init(model.params))
            print(f"  compiled {name} / {sampler}", file=sys.stderr, flush=True)
    default_threads = torch.get_num_threads()
    for n in threads:

        def torch_step(n=n):
            torch.set_num_threads(n)
            reference.step(t_ids, t_mask)
            torch.set_num_threads(default_threads)

        runners[f"torch MeZO, {n} thread{'s' * (n > 1)}"] = torch_step

    results = interleaved_medians(runners, args.runs)
    growth = rss_growth(runners)

    print(
        f"SmolLM2-135M, batch {args.batch}x{args.seq}, float32, LM loss, median of {args.runs} interleaved rounds "
        f"({environment()}; torch {torch.__version__})"
    )
    print(f"loss at the loaded weights: zojax {losses[0]:.5f}, torch {losses[1]:.5f}\n")
    torch_names = [n for n in runners if n.startswith("torch")]
    rows = []
    for name, seconds in results.items():
        speedups = [f"{results[t] / seconds:.2f}" if name.startswith("zojax") else "-" for t in torch_names]
        rows.append([name, f"{seconds:.3f}", mb(growth[name]) if growth else "?", *speedups])
    print(table(["step", "time s", "RSS growth", *(f"{t} / this" for t in torch_names)], rows))

    print(f"\ngoal: zojax's MeZO step >= {GOAL}x faster than the torch reference")
    for name in (n for n in results if n.startswith("zojax mezo")):
        for t in torch_names:
            speedup = results[t] / results[name]
            verdict = "met" if speedup >= GOAL else f"missed: needs <= {results[t] / GOAL:.2f} s"
            print(f"  {name} vs {t}: {speedup:.2f}x  {verdict}")


if __name__ == "__main__":
    main()
