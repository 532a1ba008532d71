"""``stage: prism_disc``: the discriminator warm-up (workflow, trainer, data), in LLaMA-Factory's stage shape."""
