"""The ``prism_*`` keys a LLaMA-Factory YAML may use with the PRISM stages.

They join LLaMA-Factory's own ``FinetuningArguments`` (see :func:`patches.make_finetuning_arguments`),
so one YAML holds the stock keys and ours, and unknown keys still fail as they always do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KNOWN_SEGMENTS = ("caption", "reasoning", "response")


@dataclass
class PrismArguments:
    """Settings of the PRISM stages (method.md §2-§3); defaults are the paper's."""

    prism_segments: list[str] = field(
        default_factory=lambda: ["caption", "reasoning"],
        metadata={"help": "Segments scored by the discriminator: caption and reasoning (PRISM) or response (GAD)."},
    )
    prism_segment_weights: list[float] = field(
        default_factory=lambda: [0.5, 0.5],
        metadata={"help": "Advantage weight of each segment in prism_segments, in the same order."},
    )
    prism_router_aux_coef: float = field(
        default=0.01, metadata={"help": "Coefficient of the discriminator's router load-balancing loss."}
    )
    prism_score_reg_coef: float = field(
        default=0.001, metadata={"help": "Coefficient of the L2 regulariser on discriminator scores (alignment)."}
    )
    prism_skip_invalid_rows: bool = field(
        default=False,
        metadata={"help": "Skip dataset rows that fail validation (counted and reported) instead of stopping."},
    )

    def __post_init__(self) -> None:
        unknown = [s for s in self.prism_segments if s not in KNOWN_SEGMENTS]
        if unknown or not self.prism_segments:
            raise ValueError(
                f"prism_segments must be a non-empty subset of {KNOWN_SEGMENTS}; got {self.prism_segments}"
            )
        if len(self.prism_segment_weights) != len(self.prism_segments):
            raise ValueError(
                f"prism_segment_weights needs one weight per segment: {self.prism_segments} vs "
                f"{self.prism_segment_weights}"
            )
        parent_post_init = getattr(super(), "__post_init__", None)
        if parent_post_init is not None:
            parent_post_init()

    @property
    def segment_weights(self) -> dict[str, float]:
        return dict(zip(self.prism_segments, self.prism_segment_weights, strict=True))
