"""``stage: prism_align``: the alignment game (workflow, trainer, data), in LLaMA-Factory's stage shape."""
