"""A tiny random LLaMA (transformers folder) with SmolLM2's tokenizer, and its configs."""

import sys

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer random LLaMA saved as a transformers folder, with SmolLM2's tokenizer."""
    import torch
    import transformers

    from zojax.models import default_model_path

    gguf = default_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)  # the same random model in every session
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def small_config(tiny_model):
    """``small_config(workdir, **overrides)``: a config of a few seconds on the tiny model."""
    return lambda workdir, **overrides: _small_config(tiny_model, workdir, **overrides)


def _small_config(model, workdir, **overrides):
    from zojax import finetune

    cfg = finetune.default_config()
    cfg.update(dict(
        model=str(model), workdir=str(workdir), num_train=64, num_dev=16, num_test=16, batch_size=4,
        eval_batch_size=16, steps=12, eval_every=4, checkpoint_every=4, learning_rate=1e-3, progress=False,
        compilation_cache="",
    ))
    cfg.update(overrides)
    return cfg


@pytest.fixture
def cli():
    """``cli(cfg)``: the command line that runs ``cfg`` (a ConfigDict or a dict of overrides)."""
    return lambda cfg, module="zojax.finetune": [sys.executable, "-m", module] + [f"--config.{k}={v}" for k, v in cfg.items()]
