"""The tokenizer a GGUF file describes, built from its metadata with the `tokenizers` library
(no torch): byte-level BPE (``tokenizer.ggml.model = "gpt2"``: SmolLM2, LLaMA 3) and
SentencePiece BPE (``"llama"``: LLaMA 1/2).

A GGUF file carries no ``tokenizer.json``: it stores the vocabulary, the merges (or per-token
scores), the token types and the special token ids under llama.cpp's key names. The result is a
``transformers.PreTrainedTokenizerFast``, token for token what
``AutoTokenizer.from_pretrained(folder, gguf_file=...)`` gives (tests/models/test_models_tokenizer.py).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

# llama.cpp's token types.
CONTROL, USER_DEFINED = 3, 4

# Pre-tokenizer splits by ``tokenizer.ggml.pre``; other values use GPT-2's own split.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _merges(fields: dict, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The file's merges, or (SentencePiece files without them) every split of a token into
    two tokens, best-scored token first."""
    if fields.get("tokenizer.ggml.merges") is not None:
        return [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    scores = dict(zip(fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.scores"]))
    pairs = []
    for token, score in scores.items():
        local = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
        pairs += [(left, right, score) for left, right in sorted(local, key=lambda p: (vocab[p[0]], vocab[p[1]]))]
    pairs.sort(key=lambda p: (p[2], len(p[0]), len(p[1])), reverse=True)
    return [(left, right) for left, right, _ in pairs]


def _byte_level(fields: dict) -> Tokenizer:
    alphabet = byte_alphabet()
    letters = set(alphabet.values())
    vocab = {
        t if set(t) <= letters else "".join(alphabet[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(fields["tokenizer.ggml.tokens"])
    }
    tok = Tokenizer(models.BPE(vocab, _merges(fields, vocab), fuse_unk=False))
    split = SPLITS.get(fields.get("tokenizer.ggml.pre"))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(fields: dict) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(fields["tokenizer.ggml.tokens"])}
    tok = Tokenizer(models.BPE(vocab, _merges(fields, vocab), fuse_unk=True, byte_fallback=True))
    prefix = fields.get("tokenizer.ggml.add_space_prefix", True)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix else []))
    return tok


BUILDERS = {"gpt2": _byte_level, "llama": _sentencepiece}


def gguf_fields(path: str | Path) -> dict:
    """The ``tokenizer.*`` metadata of a GGUF file as Python values."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def from_gguf(path: str | Path, fields: dict | None = None):
    """The ``PreTrainedTokenizerFast`` of a GGUF file (``fields``: its metadata if already read)."""
    from transformers import PreTrainedTokenizerFast

    fields = gguf_fields(path) if fields is None else fields
    kind = fields.get("tokenizer.ggml.model")
    if kind not in BUILDERS:
        raise ValueError(f"{path}: GGUF tokenizer model {kind!r} is not supported (supported: {sorted(BUILDERS)})")
    tok = BUILDERS[kind](fields)
    tokens, types = fields["tokenizer.ggml.tokens"], fields.get("tokenizer.ggml.token_type") or ()
    letters = set(byte_alphabet().values()) if kind == "gpt2" else None
    # Control tokens stay whole as special tokens (a byte-level one outside the byte alphabet is
    # a converter's mislabel, not a real token); user-defined ones stay whole as plain tokens.
    tok.add_special_tokens([
        AddedToken(t, normalized=False, special=True)
        for t, k in zip(tokens, types) if k == CONTROL and (letters is None or set(t) <= letters)
    ])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types) if k == USER_DEFINED])

    def special(key):
        i = fields.get(f"tokenizer.ggml.{key}")
        return None if i is None else tokens[i]

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special("bos_token_id"),
        eos_token=special("eos_token_id"),
        unk_token=special("unknown_token_id"),
        pad_token=special("padding_token_id"),
        add_bos_token=bool(fields.get("tokenizer.ggml.add_bos_token", kind == "llama")),
        add_eos_token=bool(fields.get("tokenizer.ggml.add_eos_token", False)),
        chat_template=fields.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
    )
