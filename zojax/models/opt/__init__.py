"""OPT family (125m ... 66b, including 350m's post-LN and projected embeddings)."""

from zojax.models.opt.config import OPTConfig
from zojax.models.opt.modeling import OPTAttention, OPTDecoderLayer, OPTForCausalLM

__all__ = ["OPTAttention", "OPTConfig", "OPTDecoderLayer", "OPTForCausalLM"]
