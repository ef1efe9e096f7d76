"""Tokenisation and padded numpy batches (one row per candidate)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from zojax.tasks.templates import Example


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of one example: the (truncated) context, each candidate, the gold index (-1: none)."""

    context: list[int]
    candidates: list[list[int]]
    gold: int

    @property
    def length(self) -> int:
        """Tokens in the longest row: the context and its longest candidate."""
        return len(self.context) + max(map(len, self.candidates), default=0)

    @property
    def single_token(self) -> bool:
        """A context and single-token candidates: one row can score them all (rows="shared")."""
        return bool(self.context) and all(len(c) == 1 for c in self.candidates)


class Batch(NamedTuple):
    """Right-padded rows of ``context + candidate`` tokens; a JAX pytree of numpy arrays.

    N rows, E examples, C the most candidates of an example, T the padded length.

    Attributes:
      input_ids: int32 [N, T].
      attention_mask: int32 [N, T], 1 on real tokens.
      target_mask: bool [N, T], True at the positions t whose next token
        ``input_ids[:, t + 1]`` is a candidate token, i.e. where the logits score it.
      target_positions: int32 [N, K], those positions in order, left-aligned and padded
        with 0 (the first ``target_mask.sum(1)`` are real); K is at most T - 1 (1 for
        rows="shared", 0 for rows="context"). A model can run its LM head on them alone.
      example_index: int32 [N], the row's example, 0..E-1.
      candidate_index: int32 [N], the row's candidate within its example.
      candidate_mask: bool [E, C], True for the (example, candidate) pairs that have a row.
      gold: int32 [E], the gold candidate of each example (-1: unlabelled).
      candidate_ids: int32 [E, C], each candidate's single token, when the rows are the
        contexts alone and score every candidate at their last position (rows="shared");
        [E, 0] otherwise.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    target_mask: np.ndarray
    target_positions: np.ndarray
    example_index: np.ndarray
    candidate_index: np.ndarray
    candidate_mask: np.ndarray
    gold: np.ndarray
    candidate_ids: np.ndarray


def encode(examples: Sequence[Example], tokenizer: Any, max_length: int = 2048) -> list[Encoded]:
    """Tokenise contexts and candidates with a Hugging Face tokenizer.

    Context and candidates are tokenised separately; the context starts with the
    tokens the tokenizer puts before any text (a BOS token, if it adds one) and is
    truncated from the left so that context + longest candidate fits in ``max_length``.
    """
    prefix = tokenizer("")["input_ids"]
    contexts = tokenizer([ex.context for ex in examples], add_special_tokens=False)["input_ids"]
    texts = sorted({c for ex in examples for c in ex.candidates})
    candidate_ids = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"])) if texts else {}
    out = []
    for i, (ex, context) in enumerate(zip(examples, contexts)):
        candidates = [candidate_ids[c] for c in ex.candidates]
        if not all(candidates):
            raise ValueError(f"example {i}: a candidate has no tokens: {ex.candidates}")
        room = max_length - len(prefix) - max(map(len, candidates), default=0)
        if room < 1 or not context:
            raise ValueError(f"example {i}: no room for context tokens within max_length={max_length}")
        out.append(Encoded(prefix + context[-room:], candidates, -1 if ex.gold is None else ex.gold))
    return out


def padded_length(n: int, bucket: int | str | Sequence[int] = 16, max_length: int | None = None) -> int:
    """``n`` rounded up to a multiple of ``bucket``, to a power of two if ``bucket="pow2"``,
    or to the first of the lengths ``bucket`` (a sequence of ints) that holds it (none:
    ``max_length``, else ``n``). So a run's batches take at most as many shapes as there are
    lengths.

    The result is capped at ``max_length`` (but never below ``n``).
    """
    if bucket == "pow2":
        length = 1 << max(n - 1, 0).bit_length()
    elif isinstance(bucket, int) and bucket > 0:
        length = -(-n // bucket) * bucket
    elif isinstance(bucket, (tuple, list)) and bucket and all(isinstance(b, int) and b > 0 for b in bucket):
        length = next((b for b in sorted(bucket) if b >= n), max_length or n)
    else:
        raise ValueError(f"bucket must be a positive int, 'pow2' or a sequence of positive ints, got {bucket!r}")
    return length if max_length is None else min(length, max(max_length, n))


def collate(
    encoded: Sequence[Encoded],
    rows: str = "all",
    bucket: int | str | Sequence[int] = 16,
    max_length: int | None = None,
    pad_id: int = 0,
    targets: int | None = None,
) -> Batch:
    """Pad examples into one :class:`Batch`, to their own longest row rounded up by ``bucket``
    (see :func:`padded_length`).

    ``rows``: "all" (a row per candidate: scoring and classification loss), "shared"
    (a row per example, its context, scoring single-token candidates from the logits at
    the context's last position: the same scores from one row instead of C), "gold"
    (the gold candidate only: LM loss) or "context" (the context alone, no targets:
    right-padded prompts for generation). :func:`scoring_rows` picks "shared" or "all".

    ``targets``: K, the width of ``target_positions`` (capped at T - 1), at least the most
    target tokens of a row here; None: exactly that. Giving a whole split's
    :func:`most_targets` makes K a function of T, so a run compiles no more shapes.
    """
    if rows not in ("all", "shared", "gold", "context"):
        raise ValueError(f"rows must be 'all', 'shared', 'gold' or 'context', got {rows!r}")
    items = []  # (example, candidate, token ids, context length)
    for e, enc in enumerate(encoded):
        if rows == "shared" and not enc.single_token:
            raise ValueError(
                f"example {e}: rows='shared' needs a context and single-token candidates, got context "
                f"length {len(enc.context)} and candidate lengths {[len(c) for c in enc.candidates]}"
            )
        if rows in ("context", "shared"):
            picks = [(0, [])]
        elif rows == "gold":
            if enc.gold < 0:
                raise ValueError(f"example {e} has no gold candidate")
            picks = [(enc.gold, enc.candidates[enc.gold])]
        else:
            picks = list(enumerate(enc.candidates))
        items += [(e, c, enc.context + cand, len(enc.context)) for c, cand in picks]

    length = padded_length(max(len(ids) for _, _, ids, _ in items), bucket, max_length)
    input_ids = np.full((len(items), length), pad_id, np.int32)
    attention_mask = np.zeros((len(items), length), np.int32)
    target_mask = np.zeros((len(items), length), bool)
    for r, (_, _, ids, n_context) in enumerate(items):
        input_ids[r, : len(ids)] = ids
        attention_mask[r, : len(ids)] = 1
        if rows == "shared":
            target_mask[r, n_context - 1] = True  # the logits there score every candidate
        else:
            target_mask[r, n_context - 1 : len(ids) - 1] = True
    counts = target_mask.sum(1)
    most = int(counts.max(initial=0))
    if targets is not None and targets < most:
        raise ValueError(f"targets={targets} is fewer than the {most} target tokens of a row of this batch")
    width = most if targets is None or rows in ("shared", "context") else min(targets, length - 1)
    target_positions = np.zeros((len(items), width), np.int32)
    for r, count in enumerate(counts):
        target_positions[r, :count] = np.flatnonzero(target_mask[r])
    example_index = np.array([e for e, _, _, _ in items], np.int32)
    candidate_index = np.array([c for _, c, _, _ in items], np.int32)
    candidate_mask = np.zeros((len(encoded), max(len(enc.candidates) for enc in encoded)), bool)
    candidate_ids = np.zeros((len(encoded), candidate_mask.shape[1] if rows == "shared" else 0), np.int32)
    if rows == "shared":
        for e, enc in enumerate(encoded):
            candidate_mask[e, : len(enc.candidates)] = True
            candidate_ids[e, : len(enc.candidates)] = [c[0] for c in enc.candidates]
    elif rows != "context":
        candidate_mask[example_index, candidate_index] = True
    gold = np.array([enc.gold for enc in encoded], np.int32)
    return Batch(input_ids, attention_mask, target_mask, target_positions, example_index, candidate_index,
                 candidate_mask, gold, candidate_ids)


def scoring_rows(encoded: Sequence[Encoded]) -> str:
    """The :func:`collate` rows that score ``encoded``'s candidates with the fewest rows:
    "shared" when every candidate is a single token (SST-2, RTE, CB, BoolQ, ...), else "all"."""
    return "shared" if all(enc.single_token for enc in encoded) else "all"


def most_targets(encoded: Sequence[Encoded], rows: str = "all") -> int:
    """The most target tokens of a row of ``collate(encoded, rows)``: its ``targets`` for
    every batch drawn from ``encoded``."""
    if rows == "context" or not encoded:
        return 0
    if rows == "shared":
        return 1
    if rows == "gold":
        return max((len(enc.candidates[enc.gold]) for enc in encoded if enc.gold >= 0), default=0)
    return max((len(c) for enc in encoded for c in enc.candidates), default=0)


def batches(
    encoded: Sequence[Encoded], batch_size: int, seed: int | None = None, **collate_options: Any
) -> Iterator[Batch]:
    """Batches of ``batch_size`` examples, in order or shuffled with ``seed``; see :func:`collate`
    (``targets`` defaults to ``encoded``'s :func:`most_targets`)."""
    collate_options.setdefault("targets", most_targets(encoded, collate_options.get("rows", "all")))
    order = np.arange(len(encoded)) if seed is None else np.random.default_rng(seed).permutation(len(encoded))
    for start in range(0, len(order), batch_size):
        yield collate([encoded[i] for i in order[start : start + batch_size]], **collate_options)


def decode_answers(tokenizer: Any, tokens: Any) -> list[str]:
    """Generated token rows as answers: cut at the end-of-text token and the first line break."""
    answers = []
    for row in np.asarray(tokens).tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        answers.append(tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip())
    return answers
