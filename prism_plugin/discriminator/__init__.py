"""The PRISM discriminator: a transformers ``PreTrainedModel`` with its own ``model_type``.

Importing this package registers ``prism_discriminator`` with ``AutoConfig``, ``AutoModel`` and
``AutoModelForSequenceClassification``, so ``AutoModel.from_pretrained(dir)`` loads a saved
discriminator without ``trust_remote_code``::

    import prism_plugin.discriminator  # registers the Auto classes
    from transformers import AutoModel
    disc = AutoModel.from_pretrained("out/disc")

(``import prism_plugin`` alone stays cheap and imports no torch.)

Modules: ``config`` (settings), ``modeling`` (the model), ``routing`` (per-call expert masks),
``upcycle`` (dense -> MoE), ``segment_forward`` (segment scores with shared-prefix reuse), ``rendering``
(rendering text responses for drop-in scoring).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from prism_plugin.discriminator.config import PrismDiscriminatorConfig
from prism_plugin.discriminator.modeling import PrismDiscriminator, PrismDiscriminatorOutput
from prism_plugin.discriminator.segment_forward import PromptInputs, SegmentQuery, score, score_with_aux
from prism_plugin.discriminator.upcycle import upcycle

AutoConfig.register(PrismDiscriminatorConfig.model_type, PrismDiscriminatorConfig, exist_ok=True)
AutoModel.register(PrismDiscriminatorConfig, PrismDiscriminator, exist_ok=True)
AutoModelForSequenceClassification.register(PrismDiscriminatorConfig, PrismDiscriminator, exist_ok=True)

__all__ = [
    "PrismDiscriminator",
    "PrismDiscriminatorConfig",
    "PrismDiscriminatorOutput",
    "PromptInputs",
    "SegmentQuery",
    "score",
    "score_with_aux",
    "upcycle",
]
