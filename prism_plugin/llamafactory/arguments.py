"""The ``prism_*`` keys a LLaMA-Factory YAML may use with the PRISM stages.

They join LLaMA-Factory's own ``FinetuningArguments`` (see :func:`patches.make_finetuning_arguments`),
so one YAML holds the stock keys and ours, and unknown keys still fail as they always do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KNOWN_SEGMENTS = ("caption", "reasoning", "response")
COUNT_KEYS = (
    "prism_num_generations", "prism_policy_epochs", "prism_disc_update_every", "prism_drift_every",
    "prism_drift_num_prompts", "prism_drift_num_generations", "prism_drift_max_new_tokens",
)


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
    prism_discriminator: str | None = field(
        default=None, metadata={"help": "prism_align: path of the (warmed-up) PRISM discriminator."}
    )
    prism_reward: str = field(
        default="discriminator",
        metadata={"help": "prism_align: what scores rollouts — discriminator (PRISM), verifiable (the rule-based "
                          "answer reward on the whole response: GRPO/RLVR) or FILE.py:FUNCTION (per-segment scores)."},
    )
    prism_num_generations: int = field(default=16, metadata={"help": "prism_align: rollouts per prompt (G)."})
    prism_max_new_tokens: int = field(default=6144, metadata={"help": "prism_align: rollout length limit."})
    prism_temperature: float = field(default=1.0, metadata={"help": "prism_align: sampling temperature."})
    prism_format_penalty: float = field(
        default=1.5, metadata={"help": "prism_align: advantage penalty λ for a rollout outside the layout."}
    )
    prism_scale_advantages: bool = field(
        default=True,
        metadata={"help": "prism_align: divide each segment's group-centred scores by the group's std (GRPO); "
                          "false only centres them (Dr. GRPO), so near-equal scores give near-zero advantages."},
    )
    prism_score_clip: float = field(default=10.0, metadata={"help": "prism_align: clip discriminator scores to ±this."})
    prism_disc_learning_rate: float = field(
        default=1e-6, metadata={"help": "prism_align: discriminator AdamW learning rate (constant)."}
    )
    prism_disc_weight_decay: float = field(default=0.01, metadata={"help": "prism_align: discriminator weight decay."})
    prism_disc_max_grad_norm: float = field(default=1.0, metadata={"help": "prism_align: discriminator grad clip."})
    prism_update_discriminator: bool = field(
        default=True, metadata={"help": "prism_align: train the discriminator each step (false: a fixed scorer)."}
    )
    prism_policy_loss: str = field(
        default="grpo", metadata={"help": "prism_align: policy loss from the registry (grpo, dapo, gspo, gspo_token)."}
    )
    prism_clip_low: float = field(default=0.2, metadata={"help": "prism_align: PPO clip range below 1."})
    prism_clip_high: float | None = field(
        default=None, metadata={"help": "prism_align: PPO clip range above 1 (default: prism_clip_low)."}
    )
    prism_policy_epochs: int = field(
        default=1, metadata={"help": "prism_align: policy updates per batch of rollouts (>1 makes the clip bind)."}
    )
    prism_min_disc_accuracy: float = field(
        default=0.0,
        metadata={"help": "prism_align: skip the policy update of a batch on which the discriminator ranks the "
                          "teacher above fewer than this share of the fresh rollouts (0 = never skip)."},
    )
    prism_disc_update_every: int = field(
        default=1, metadata={"help": "prism_align: update the discriminator every N rollout batches."}
    )
    prism_drift_monitor: str | None = field(
        default=None,
        metadata={"help": "stage sft: a PRISM discriminator; logs the teacher-student score gap while training."},
    )
    prism_drift_data: str | None = field(
        default=None, metadata={"help": "prism_drift_monitor: held-out alignment prompts (jsonl/json/parquet)."}
    )
    prism_drift_every: int = field(default=50, metadata={"help": "stage sft + prism_drift_monitor: every N steps."})
    prism_drift_num_prompts: int = field(default=8, metadata={"help": "prism_drift_monitor: prompts per check."})
    prism_drift_num_generations: int = field(default=2, metadata={"help": "prism_drift_monitor: samples per prompt."})
    prism_drift_max_new_tokens: int = field(default=256, metadata={"help": "prism_drift_monitor: sample length."})
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
        counts = {name: getattr(self, name) for name in COUNT_KEYS}
        if min(counts.values()) < 1:
            raise ValueError(f"these keys must be >= 1: {', '.join(f'{k}={v}' for k, v in counts.items() if v < 1)}")
        if not 0.0 <= self.prism_min_disc_accuracy <= 1.0:
            raise ValueError(f"prism_min_disc_accuracy must be in [0, 1]; got {self.prism_min_disc_accuracy}")
        from prism_plugin.llamafactory.align_rewards import check_reward_spec

        check_reward_spec(self.prism_reward)
        if self.prism_drift_monitor and not self.prism_drift_data:
            raise ValueError("prism_drift_monitor needs prism_drift_data (held-out prompts with teacher segments)")
        parent_post_init = getattr(super(), "__post_init__", None)
        if parent_post_init is not None:
            parent_post_init()

    @property
    def segment_weights(self) -> dict[str, float]:
        return dict(zip(self.prism_segments, self.prism_segment_weights, strict=True))
