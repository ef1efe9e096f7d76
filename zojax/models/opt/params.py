"""The OPT conversion table: transformers tensor names <-> zojax parameter paths.

    embed_tokens/embedding [V, P]       embed_positions/embedding [max_pos + 2, H]
    project_in/kernel [P, H], project_out/kernel [H, P]     (only when P != H)
    final_layer_norm/{scale,bias}       (pre-LN only)       lm_head/kernel [P, V] (untied only)
    layers/self_attn/{q,k,v,out}_proj/{kernel,bias}         layers/fc1, layers/fc2
    layers/self_attn_layer_norm/{scale,bias}                layers/final_layer_norm

Older checkpoints without the `model.` prefix are accepted by the loader.
"""

from zojax.models.base import HFTensor, hf_linear, hf_norm
from zojax.models.opt.config import POSITION_OFFSET


def hf_tensors(c) -> list[HFTensor]:
    """The table of an `OPTConfig`."""
    h, f, p = c.hidden_size, c.ffn_dim, c.word_embed_proj_dim
    dec, lay = "model.decoder.", "model.decoder.layers.{i}."
    table = [
        HFTensor(dec + "embed_tokens.weight", ("embed_tokens", "embedding"), (c.vocab_size, p)),
        HFTensor(
            dec + "embed_positions.weight",
            ("embed_positions", "embedding"),
            (c.max_position_embeddings + POSITION_OFFSET, h),
        ),
    ]
    if c.projects:
        table += hf_linear(dec + "project_in", ("project_in",), p, h)
        table += hf_linear(dec + "project_out", ("project_out",), h, p)
    if c.has_final_layer_norm:
        table += hf_norm(dec + "final_layer_norm", ("final_layer_norm",), h, bias=True)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        table += hf_linear(lay + "self_attn." + name, ("layers", "self_attn", name), h, h, bias=True)
    table += hf_norm(lay + "self_attn_layer_norm", ("layers", "self_attn_layer_norm"), h, bias=True)
    table += hf_linear(lay + "fc1", ("layers", "fc1"), h, f, bias=True)
    table += hf_linear(lay + "fc2", ("layers", "fc2"), f, h, bias=True)
    table += hf_norm(lay + "final_layer_norm", ("layers", "final_layer_norm"), h, bias=True)
    if not c.tie_word_embeddings:
        table += hf_linear("lm_head", ("lm_head",), p, c.vocab_size)
    return table
