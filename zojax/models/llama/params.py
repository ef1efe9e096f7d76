"""The LLaMA-family conversion table: transformers tensor names <-> zojax parameter paths, read
in one direction by `zojax.models.load` and in the other by `zojax.models.save_hf`.

    embed_tokens/embedding [V, H]          norm/scale [H]          lm_head/kernel [H, V] (untied only)
    layers/input_layernorm/scale           layers/post_attention_layernorm/scale
    layers/self_attn/{q,k,v,o}_proj/{kernel,bias?}     layers/self_attn/{q,k}_norm/scale (Qwen3)
    layers/mlp/{gate,up,down}_proj/{kernel,bias?}

Everything under 'layers' has a leading layer axis; kernels are torch weights transposed.
"""

from zojax.models.base import HFTensor, hf_linear, hf_norm


def hf_tensors(c) -> list[HFTensor]:
    """The table of a `LlamaConfig` (or a Mistral/Qwen2/Qwen3 config)."""
    h, v, f = c.hidden_size, c.vocab_size, c.intermediate_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    lay, att, mlp = "model.layers.{i}.", ("layers", "self_attn"), ("layers", "mlp")
    table = [
        HFTensor("model.embed_tokens.weight", ("embed_tokens", "embedding"), (v, h)),
        *hf_norm(lay + "input_layernorm", ("layers", "input_layernorm"), h),
        *hf_linear(lay + "self_attn.q_proj", (*att, "q_proj"), h, q, c.qkv_bias),
        *hf_linear(lay + "self_attn.k_proj", (*att, "k_proj"), h, kv, c.qkv_bias),
        *hf_linear(lay + "self_attn.v_proj", (*att, "v_proj"), h, kv, c.qkv_bias),
        *hf_linear(lay + "self_attn.o_proj", (*att, "o_proj"), q, h, c.o_bias),
    ]
    if c.qk_norm:
        table += hf_norm(lay + "self_attn.q_norm", (*att, "q_norm"), c.head_dim)
        table += hf_norm(lay + "self_attn.k_norm", (*att, "k_norm"), c.head_dim)
    table += [
        *hf_norm(lay + "post_attention_layernorm", ("layers", "post_attention_layernorm"), h),
        *hf_linear(lay + "mlp.gate_proj", (*mlp, "gate_proj"), h, f, c.mlp_bias),
        *hf_linear(lay + "mlp.up_proj", (*mlp, "up_proj"), h, f, c.mlp_bias),
        *hf_linear(lay + "mlp.down_proj", (*mlp, "down_proj"), f, h, c.mlp_bias),
        *hf_norm("model.norm", ("norm",), h),
    ]
    if not c.tie_word_embeddings:
        table += hf_linear("lm_head", ("lm_head",), h, v)
    return table
