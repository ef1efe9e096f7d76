"""Tokenisation, truncation, padding buckets and the batch layout."""

import numpy as np
import pytest

from zojax.tasks import (
    Encoded,
    batches,
    collate,
    decode_answers,
    encode,
    load_task,
    most_targets,
    padded_length,
    read_file,
    scoring_rows,
)
from zojax.tasks.templates import Example


class WordTokenizer:
    """Whitespace tokenizer with a BOS token (id 1); word ids from 10 up, in first-seen order."""

    def __init__(self):
        self.vocab = {}

    def _ids(self, text, add_special_tokens):
        ids = [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]
        return [1, *ids] if add_special_tokens else ids

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self._ids(t, add_special_tokens) for t in text]}
        return {"input_ids": self._ids(text, add_special_tokens)}


def _example(context, candidates, gold):
    return Example({}, context, candidates, gold)


def test_encode_keeps_bos_and_truncates_context_from_the_left():
    tok = WordTokenizer()
    examples = [_example("a b c d e f", (" x", " y z"), 1), _example("g", (" x",), None)]
    [a, b] = encode(examples, tok, max_length=6)
    ids = tok.vocab
    assert a.context == [1, ids["d"], ids["e"], ids["f"]]  # 6 - BOS - longest candidate (2): last 3 words
    assert a.candidates == [[ids["x"]], [ids["y"], ids["z"]]] and a.gold == 1
    assert b.context == [1, ids["g"]] and b.gold == -1
    with pytest.raises(ValueError, match="no room for context"):
        encode([_example("a", (" x y z",), 0)], tok, max_length=4)


def test_padded_length():
    assert [padded_length(n) for n in (1, 16, 17, 40)] == [16, 16, 32, 48]
    assert [padded_length(n, "pow2") for n in (1, 5, 16, 17, 100)] == [1, 8, 16, 32, 128]
    assert padded_length(17, 16, max_length=20) == 20
    # A list of lengths: the first that holds the row; none -> max_length (else the row's own).
    assert [padded_length(n, (64, 32, 128)) for n in (1, 32, 33, 100, 128)] == [32, 32, 64, 128, 128]
    assert padded_length(200, (64, 128), max_length=256) == 256
    assert padded_length(200, (64, 128)) == 200
    with pytest.raises(ValueError, match="bucket must be"):
        padded_length(5, (0, 16))
    assert padded_length(30, 16, max_length=20) == 30
    with pytest.raises(ValueError, match="bucket"):
        padded_length(3, 0)


ENCODED = [
    Encoded(context=[5, 6, 7], candidates=[[8], [9, 10]], gold=1),
    Encoded(context=[11], candidates=[[12], [13], [14, 15, 16]], gold=0),
]


def test_collate_layout_one_row_per_candidate():
    batch = collate(ENCODED, bucket=8)
    assert batch.input_ids.tolist() == [
        [5, 6, 7, 8, 0, 0, 0, 0],
        [5, 6, 7, 9, 10, 0, 0, 0],
        [11, 12, 0, 0, 0, 0, 0, 0],
        [11, 13, 0, 0, 0, 0, 0, 0],
        [11, 14, 15, 16, 0, 0, 0, 0],
    ]
    assert batch.attention_mask.sum(1).tolist() == [4, 5, 2, 2, 4]
    # position t is marked when input_ids[t + 1] is a candidate token
    assert [np.flatnonzero(row).tolist() for row in batch.target_mask] == [[2], [2, 3], [0], [0], [0, 1, 2]]
    assert batch.target_positions.tolist() == [[2, 0, 0], [2, 3, 0], [0, 0, 0], [0, 0, 0], [0, 1, 2]]
    assert batch.example_index.tolist() == [0, 0, 1, 1, 1]
    assert batch.candidate_index.tolist() == [0, 1, 0, 1, 2]
    assert batch.candidate_mask.tolist() == [[True, True, False], [True, True, True]]
    assert batch.gold.tolist() == [1, 0]
    assert batch.input_ids.dtype == np.int32 and batch.target_mask.dtype == bool


def test_collate_gold_and_context_rows():
    gold = collate(ENCODED, rows="gold", bucket=8)
    assert gold.input_ids[:, :5].tolist() == [[5, 6, 7, 9, 10], [11, 12, 0, 0, 0]]
    assert gold.candidate_index.tolist() == [1, 0]
    assert gold.candidate_mask.tolist() == [[False, True, False], [True, False, False]]
    prompts = collate(ENCODED, rows="context", bucket="pow2", pad_id=3)
    assert prompts.input_ids.tolist() == [[5, 6, 7, 3], [11, 3, 3, 3]]
    assert not prompts.target_mask.any() and not prompts.candidate_mask.any()
    assert gold.target_positions.tolist() == [[2, 3], [0, 0]] and prompts.target_positions.shape == (2, 0)
    with pytest.raises(ValueError, match="no gold"):
        collate([Encoded([1], [[2]], -1)], rows="gold")


def test_shared_rows_need_single_token_candidates():
    single = [Encoded([1, 2], [[3], [4]], 0), Encoded([5], [[6], [7], [8]], 2)]
    assert scoring_rows(single) == "shared" and scoring_rows(ENCODED) == "all"
    batch = collate(single, rows="shared", bucket=4)
    assert batch.input_ids.tolist() == [[1, 2, 0, 0], [5, 0, 0, 0]]
    assert batch.candidate_mask.tolist() == [[True, True, False], [True, True, True]]
    assert collate(ENCODED).candidate_ids.shape == (2, 0)
    with pytest.raises(ValueError, match=r"example 0: rows='shared' needs .* candidate lengths \[1, 2\]"):
        collate(ENCODED, rows="shared")


def test_target_positions_take_a_split_wide_width():
    """``targets`` widens every batch's target positions to one K (at most T - 1), so the
    batches of a split take one shape per padded length; fewer than a row needs is refused."""
    assert [most_targets(ENCODED, rows) for rows in ("all", "gold", "shared", "context")] == [3, 2, 1, 0]
    wide = collate(ENCODED, bucket=8, targets=5)
    assert wide.target_positions.tolist() == [[2, 0, 0, 0, 0], [2, 3, 0, 0, 0], [0] * 5, [0] * 5, [0, 1, 2, 0, 0]]
    assert collate(ENCODED, bucket=8, targets=50).target_positions.shape == (5, 7)
    assert collate(ENCODED[:1], bucket=8, targets=3).target_positions.shape == (2, 3)
    with pytest.raises(ValueError, match="targets=2 is fewer than the 3 target tokens"):
        collate(ENCODED, targets=2)
    single = [Encoded([1, 2], [[3], [4]], 0)]
    assert collate(single, rows="shared", targets=4).target_positions.tolist() == [[1]]
    widths = {b.target_positions.shape[1] for b in batches(ENCODED, batch_size=1, bucket=8)}
    assert widths == {3}


def test_batches_pad_to_their_own_bucket():
    short = Encoded([1] * 5, [[2]], 0)
    long = Encoded([1] * 30, [[2]], 0)
    lengths = [b.input_ids.shape[1] for b in batches([short, short, long], batch_size=2)]
    assert lengths == [16, 32]
    first = [b.input_ids.shape[1] for b in batches([short, short, long, long], batch_size=2, seed=0)]
    assert first == [b.input_ids.shape[1] for b in batches([short, short, long, long], batch_size=2, seed=0)]
    examples = [Encoded([i], [[2]], 0) for i in range(7)]
    seen = [int(x) for b in batches(examples, 3, seed=1) for x in b.input_ids[:, 0]]
    assert sorted(seen) == list(range(7)) and seen != list(range(7))


def test_separate_tokenisation_matches_the_joint_text(data_dir, tokenizer):
    """Candidates tokenised apart from the context give the same ids as the full prompt."""
    files = {"rte": "RTE/val.jsonl", "copa": "COPA/val.jsonl", "sst2": "SST-2/dev.tsv",
             "wsc": "WSC/val.jsonl", "cb": "CB/val.jsonl"}
    for task, path in files.items():
        examples = read_file(task, data_dir / path)[:20]
        for ex, enc in zip(examples, encode(examples, tokenizer)):
            for text, ids in zip(ex.candidates, enc.candidates):
                assert tokenizer(ex.context + text)["input_ids"] == enc.context + ids


def test_real_batches_cover_every_candidate(tokenizer):
    data = load_task("tiny_sentiment")
    encoded = encode(data.test, tokenizer)
    batch = collate(encoded[:4])
    assert batch.input_ids.shape[0] == 8 and batch.input_ids.shape[1] % 16 == 0
    great = tokenizer(" great", add_special_tokens=False)["input_ids"]
    rows = np.flatnonzero(batch.candidate_index == 1)
    assert all(batch.input_ids[r, np.flatnonzero(batch.target_mask[r]) + 1].tolist() == great for r in rows)


def test_decode_answers(tokenizer):
    ids = tokenizer(" Denver Broncos\nQuestion: who?", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    rows = [ids, [*tokenizer(" the 1900s", add_special_tokens=False)["input_ids"], eos, *ids][: len(ids)]]
    assert decode_answers(tokenizer, rows) == ["Denver Broncos", "the 1900s"]
