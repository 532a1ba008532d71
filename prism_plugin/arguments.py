"""The ``prism_*`` keys a LLaMA-Factory YAML may use, one dataclass per feature (LLaMA-Factory's style).

They join LLaMA-Factory's own ``FinetuningArguments`` (see :func:`patches.make_finetuning_arguments`),
so one YAML holds the stock keys and ours, and unknown keys still fail as they always do. Each
dataclass validates its keys in ``__post_init__``; the fields here are the only home of every
default: the trainers, scorers and samplers read them, and ``yaml/README.md``'s key tables are
generated from them (``python -m prism_plugin.arguments``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from prism_plugin.advantage import FORMAT_PENALTY
from prism_plugin.errors import ConfigError, check_at_least_one, did_you_mean
from prism_plugin.layout import KNOWN_SEGMENTS, SEGMENT_NAMES

DISCRIMINATOR = "discriminator"
VERIFIABLE = "verifiable"
REG_ROWS = ("all", "valid")
ROLLOUT_ENGINES = ("hf", "vllm")
NO_VALID_PAIR = ("teacher", "skip")


def _chain_post_init(obj: Any, cls: type) -> None:
    """Call the next ``__post_init__`` in the MRO after ``cls`` (the feature dataclasses are mixed together)."""
    parent = getattr(super(cls, obj), "__post_init__", None)
    if parent is not None:
        parent()


def _at_least_one(obj: Any, *names: str) -> None:
    check_at_least_one(*((name, getattr(obj, name)) for name in names))


def check_reward_spec(spec: str) -> tuple[str, str] | None:
    """Validate a ``prism_reward`` value; ``(FILE.py, FUNCTION)`` for a scorer file, else None."""
    if spec in (DISCRIMINATOR, VERIFIABLE):
        return None
    path, sep, name = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not name:
        raise ConfigError(f"prism_reward must be 'discriminator', 'verifiable' or 'FILE.py:FUNCTION'; got {spec!r}"
                         + did_you_mean(spec, (DISCRIMINATOR, VERIFIABLE)))
    return path, name


@dataclass
class PrismDataArguments:
    """Dataset rows of the PRISM stages and the drift monitor."""

    prism_skip_invalid_rows: bool = field(
        default=False,
        metadata={"help": "Skip dataset rows that fail validation (counted and reported) instead of stopping."},
    )


@dataclass
class DiscriminatorArguments:
    """The discriminator: what it scores and how it trains (prism_disc and prism_align)."""

    prism_segments: list[str] = field(
        default_factory=lambda: list(SEGMENT_NAMES),
        metadata={"help": "Segments the discriminator scores: caption and reasoning (PRISM) or response (GAD)."},
    )
    prism_router_aux_coef: float | None = field(
        default=None,
        metadata={"help": "Router load-balancing loss coefficient (default: the discriminator's "
                          "router_aux_loss_coef, 0.01 as upcycled)."},
    )
    prism_discriminator: str | None = field(
        default=None, metadata={"help": "prism_align: the (warmed-up) discriminator directory."}
    )
    prism_score_clip: float | None = field(
        default=None,
        metadata={"help": "prism_align: scores are clipped to ±this, as rewards and inside the Bradley–Terry loss "
                          "(default: the discriminator's score_clip, 10)."},
    )
    prism_score_reg_coef: float = field(
        default=0.001, metadata={"help": "prism_align: coefficient of the L2 regulariser on discriminator scores."}
    )
    prism_score_reg_rows: str = field(
        default="all",
        metadata={"help": "prism_align: rows of the score regulariser: all (the authors': invalid rollouts are "
                          "scored split at half their length) or valid (only layout-valid rollouts; no extra rows)."},
    )
    prism_no_valid_pair: str = field(
        default="teacher",
        metadata={"help": "prism_align: a rank with no valid rollout trains on 0.01·(−log σ(mean teacher score)) per "
                          "segment + the regulariser (teacher, the authors') or contributes nothing (skip)."},
    )
    prism_disc_learning_rate: float = field(
        default=1e-6, metadata={"help": "prism_align: discriminator AdamW learning rate (constant)."}
    )
    prism_disc_weight_decay: float = field(default=0.01, metadata={"help": "prism_align: discriminator weight decay."})
    prism_disc_max_grad_norm: float = field(default=1.0, metadata={"help": "prism_align: discriminator grad clip."})
    prism_update_discriminator: bool = field(
        default=True, metadata={"help": "prism_align: train the discriminator each step (false: a fixed scorer)."}
    )
    prism_disc_update_every: int = field(
        default=1, metadata={"help": "prism_align: update the discriminator every N rollout batches."}
    )

    def __post_init__(self) -> None:
        unknown = [s for s in self.prism_segments if s not in KNOWN_SEGMENTS]
        if unknown or not self.prism_segments:
            raise ConfigError(f"prism_segments must be a non-empty subset of {KNOWN_SEGMENTS}; got "
                              f"{self.prism_segments}" + (did_you_mean(unknown[0], KNOWN_SEGMENTS) if unknown else ""))
        if self.prism_score_reg_rows not in REG_ROWS:
            raise ConfigError(f"prism_score_reg_rows must be one of {REG_ROWS}; got {self.prism_score_reg_rows!r}")
        if self.prism_no_valid_pair not in NO_VALID_PAIR:
            raise ConfigError(f"prism_no_valid_pair must be one of {NO_VALID_PAIR}; got {self.prism_no_valid_pair!r}")
        if self.prism_score_clip is not None and self.prism_score_clip <= 0:
            raise ConfigError(f"prism_score_clip must be > 0; got {self.prism_score_clip}")
        _at_least_one(self, "prism_disc_update_every")
        _chain_post_init(self, DiscriminatorArguments)


@dataclass
class AlignArguments:
    """prism_align: rollouts, what scores them, and the advantages."""

    prism_reward: str = field(
        default=DISCRIMINATOR,
        metadata={"help": "What scores rollouts: discriminator (PRISM), verifiable (the rule-based answer reward on "
                          "the whole response: GRPO/RLVR) or FILE.py:FUNCTION (per-segment scores)."},
    )
    prism_num_generations: int = field(
        default=16, metadata={"help": "Rollouts per prompt (G), at least 2: advantages compare a prompt's rollouts."}
    )
    prism_max_new_tokens: int = field(default=6144, metadata={"help": "Rollout length limit (tokens)."})
    prism_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature (also applied to the log-probs; the drift monitor's too)."}
    )
    prism_segment_weights: list[float] = field(
        default_factory=lambda: [0.5, 0.5],
        metadata={"help": "Advantage weight of each segment in prism_segments, in the same order (α_c, α_r)."},
    )
    prism_format_penalty: float = field(
        default=FORMAT_PENALTY,
        metadata={"help": "Advantage penalty λ for a rollout outside the layout (truncated ones too)."}
    )
    prism_scale_advantages: bool = field(
        default=True,
        metadata={"help": "Divide each segment's group-centred scores by the group's std (GRPO); false only centres "
                          "them (Dr. GRPO), so near-equal scores give near-zero advantages."},
    )
    prism_min_disc_accuracy: float = field(
        default=0.0,
        metadata={"help": "Skip the policy update of a batch on which the discriminator ranks the teacher above fewer "
                          "than this share of the fresh rollouts (0 = never skip)."},
    )

    prism_groups_across_ranks: bool = field(
        default=False,
        metadata={"help": "Spread each prompt's G rollouts over the data-parallel ranks (as trl's GRPOTrainer does): "
                          "per_device_train_batch_size then counts rollouts per rank, and a step holds "
                          "per_device_train_batch_size × ranks × accumulation / G prompts (the paper's 4 × 16 on 8 "
                          "GPUs is per_device_train_batch_size: 8)."},
    )
    prism_rollout_chunk_size: int | None = field(
        default=None,
        metadata={"help": "prism_rollout_engine hf: generate a step's rollouts in micro-batches of at most this many "
                          "sequences (bounds the rollout KV cache without changing the batch, G or the length; "
                          "default: all at once)."},
    )
    prism_dynamic_sampling: bool = field(
        default=False,
        metadata={"help": "prism_reward: verifiable: drop prompt groups whose rewards do not vary (no signal under "
                          "group normalisation) and refill from further prompts, as DAPO does."},
    )
    prism_max_sampling_rounds: int = field(
        default=3,
        metadata={"help": "prism_dynamic_sampling: rounds of further prompts a batch may draw to refill dropped "
                          "groups; what is still missing after them is left out of that step."},
    )
    prism_overlong_buffer: int = field(
        default=0,
        metadata={"help": "prism_reward: verifiable: DAPO's soft overlong punishment over the last this many tokens "
                          "before prism_max_new_tokens (0: off)."},
    )
    prism_overlong_penalty: float = field(
        default=1.0, metadata={"help": "prism_overlong_buffer: the penalty at prism_max_new_tokens."}
    )

    def __post_init__(self) -> None:
        check_reward_spec(self.prism_reward)
        if self.prism_dynamic_sampling and self.prism_groups_across_ranks:
            raise ConfigError("prism_dynamic_sampling drops whole prompt groups on one rank: it does not combine with "
                              "prism_groups_across_ranks")
        if (self.prism_dynamic_sampling or self.prism_overlong_buffer) and self.prism_reward != VERIFIABLE:
            raise ConfigError("prism_dynamic_sampling and prism_overlong_buffer shape the verifiable reward: set "
                              f"prism_reward: verifiable (got {self.prism_reward!r})")
        if not 0 <= self.prism_overlong_buffer <= self.prism_max_new_tokens:
            raise ConfigError(f"prism_overlong_buffer must be in [0, prism_max_new_tokens]; got "
                              f"{self.prism_overlong_buffer}")
        _at_least_one(self, "prism_max_sampling_rounds", "prism_rollout_chunk_size")
        _at_least_one(self, "prism_max_new_tokens")
        if self.prism_num_generations < 2:
            raise ConfigError(f"prism_num_generations must be >= 2; got {self.prism_num_generations}: advantages are "
                              "normalised within each prompt's group of rollouts, so a group of one has advantage 0 "
                              "and the policy learns nothing")
        if self.prism_temperature <= 0:
            raise ConfigError(f"prism_temperature must be > 0; got {self.prism_temperature}")
        if not 0.0 <= self.prism_min_disc_accuracy <= 1.0:
            raise ConfigError(f"prism_min_disc_accuracy must be in [0, 1]; got {self.prism_min_disc_accuracy}")
        segments = getattr(self, "prism_segments", None)
        if segments is not None and len(self.prism_segment_weights) != len(segments):
            raise ConfigError(
                f"prism_segment_weights needs one weight per segment: {segments} vs {self.prism_segment_weights}"
            )
        _chain_post_init(self, AlignArguments)


@dataclass
class RolloutEngineArguments:
    """prism_align: the engine that samples the rollouts (transformers generate, or vLLM colocated)."""

    prism_rollout_engine: str = field(
        default="hf",
        metadata={"help": "hf (transformers generate on the policy) or vllm (an in-process vLLM engine per rank, "
                          "synced once per optimiser step; needs prism-plugin[vllm], vLLM 0.19.1 to 0.28.x)."},
    )
    prism_vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={"help": "vllm: the share of each GPU's memory the vLLM engine takes (its weights and KV cache)."},
    )
    prism_vllm_sleep_mode: bool = field(
        default=True,
        metadata={"help": "vllm: the engine gives its memory back between rollouts (sleep / wake_up), so the "
                          "update has the card; false keeps it (faster, needs the room; CPU has no sleep mode)."},
    )
    prism_vllm_enforce_eager: bool = field(
        default=False, metadata={"help": "vllm: no CUDA graphs (slower generation, less memory, faster start)."}
    )

    def __post_init__(self) -> None:
        engine = self.prism_rollout_engine
        if engine not in ROLLOUT_ENGINES:
            raise ConfigError(f"prism_rollout_engine must be one of {ROLLOUT_ENGINES}; got {engine!r}"
                              f"{did_you_mean(engine, ROLLOUT_ENGINES)}")
        if not 0.0 < self.prism_vllm_gpu_memory_utilization <= 1.0:
            raise ConfigError(f"prism_vllm_gpu_memory_utilization must be in (0, 1]; got "
                              f"{self.prism_vllm_gpu_memory_utilization}")
        _chain_post_init(self, RolloutEngineArguments)


@dataclass
class PolicyLossArguments:
    """prism_align: the policy update. Unset clip and aggregation keys keep the loss's own values."""

    prism_policy_loss: str = field(
        default="grpo", metadata={"help": "Policy loss from the registry: grpo, dapo, gspo, gspo_token."}
    )
    prism_clip_low: float | None = field(
        default=None, metadata={"help": "PPO clip range below 1 (default: the loss's own, e.g. 0.2; gspo 3e-4)."}
    )
    prism_clip_high: float | None = field(
        default=None, metadata={"help": "PPO clip range above 1 (default: the loss's own, e.g. dapo 0.28; gspo 4e-4)."}
    )
    prism_loss_agg_mode: str | None = field(
        default=None,
        metadata={"help": "Loss aggregation (default: the loss's own): token-mean, seq-mean-token-mean, "
                          "seq-mean-token-sum, seq-mean-token-sum-norm (Dr. GRPO, divided by prism_max_new_tokens)."},
    )
    prism_policy_epochs: int = field(
        default=1, metadata={"help": "Policy updates per batch of rollouts (> 1 makes the clip bind)."}
    )
    prism_logprob_chunk_size: int | None = field(
        default=512,
        metadata={"help": "Completion positions whose logits the policy loss holds at once (the output layer runs "
                          "in chunks, recomputed in backward; same result). null: all logits in one piece."},
    )

    def __post_init__(self) -> None:
        from prism_plugin.losses import AGG_MODES, policy_loss_names

        names = policy_loss_names()
        if self.prism_policy_loss not in names:
            raise ConfigError(f"prism_policy_loss {self.prism_policy_loss!r} is not a registered policy loss"
                             f"{did_you_mean(self.prism_policy_loss, names)}; registered: {', '.join(names)}")
        if self.prism_loss_agg_mode is not None and self.prism_loss_agg_mode not in AGG_MODES:
            raise ConfigError(f"prism_loss_agg_mode must be one of {', '.join(AGG_MODES)}; "
                             f"got {self.prism_loss_agg_mode!r}{did_you_mean(self.prism_loss_agg_mode, AGG_MODES)}")
        _at_least_one(self, "prism_policy_epochs", "prism_logprob_chunk_size")
        _chain_post_init(self, PolicyLossArguments)


@dataclass
class DriftMonitorArguments:
    """Any LLaMA-Factory run (stage sft …): the discriminator as a drift monitor of the model being trained."""

    prism_drift_monitor: str | None = field(
        default=None, metadata={"help": "A PRISM discriminator; logs the teacher−policy score gap while training."}
    )
    prism_drift_data: str | None = field(
        default=None, metadata={"help": "Held-out alignment prompts (jsonl/json/parquet with teacher segments)."}
    )
    prism_drift_every: int = field(default=50, metadata={"help": "Check every N optimizer steps (and at the end)."})
    prism_drift_num_prompts: int = field(default=8, metadata={"help": "Prompts per check."})
    prism_drift_num_generations: int = field(default=2, metadata={"help": "Samples per prompt."})
    prism_drift_max_new_tokens: int = field(default=256, metadata={"help": "Sample length limit (tokens)."})

    def __post_init__(self) -> None:
        _at_least_one(self, "prism_drift_every", "prism_drift_num_prompts", "prism_drift_num_generations",
                      "prism_drift_max_new_tokens")
        if self.prism_drift_monitor and not self.prism_drift_data:
            raise ConfigError("prism_drift_monitor needs prism_drift_data (held-out prompts with teacher segments)")
        _chain_post_init(self, DriftMonitorArguments)


FEATURES = (PrismDataArguments, DiscriminatorArguments, AlignArguments, RolloutEngineArguments, PolicyLossArguments,
            DriftMonitorArguments)


@dataclass
class PrismArguments(DriftMonitorArguments, PolicyLossArguments, RolloutEngineArguments, AlignArguments,
                     DiscriminatorArguments, PrismDataArguments):
    """Every ``prism_*`` key (one dataclass per feature, each validating its own keys)."""

    @property
    def segment_weights(self) -> dict[str, float]:
        """The advantage weight of each scored segment (``response`` with weight 1 for the verifiable reward)."""
        if self.prism_reward == VERIFIABLE:
            return {"response": 1.0}
        return dict(zip(self.prism_segments, self.prism_segment_weights, strict=True))

    @property
    def trains_discriminator(self) -> bool:
        return self.prism_reward == DISCRIMINATOR and self.prism_update_discriminator


def _default_text(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return "[" + ", ".join(str(v) for v in value) + "]" if isinstance(value, list) else str(value)
    if f.default is None:
        return "–"
    if isinstance(f.default, bool):
        return str(f.default).lower()
    return str(f.default)


def key_tables() -> str:
    """Markdown tables of every ``prism_*`` key, one per feature dataclass (the text of yaml/README.md)."""
    blocks = []
    for cls in FEATURES:
        own = [f for f in dataclasses.fields(cls) if f.name in cls.__annotations__]
        rows = [f"| `{f.name}` | `{_default_text(f)}` | {f.metadata['help']} |" for f in own]
        blocks.append(f"### {cls.__doc__.splitlines()[0]}\n\n| key | default | meaning |\n|---|---|---|\n"
                      + "\n".join(rows))
    return "\n\n".join(blocks) + "\n"


if __name__ == "__main__":
    print(key_tables(), end="")


def _kinds(hint: Any) -> tuple[type, ...]:
    """The Python types a dataclass field's annotation admits (``int | None`` -> int, NoneType)."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(kind for arg in typing.get_args(hint) for kind in _kinds(arg))
    if origin is typing.Literal:
        return tuple({type(value) for value in typing.get_args(hint)})
    kind = origin or hint
    return (type(None),) if kind is None else (kind, int) if kind is float else (kind,)


def prism_arguments(values: dict[str, Any], source: str | None = None) -> PrismArguments:
    """:class:`PrismArguments` from ``prism_*`` values read from a YAML file as they are (LLaMA-Factory's parser
    checks types; raw YAML does not): an unknown key, a value of the wrong type or one the keys' own checks
    refuse is a :class:`ConfigError` (prefixed with ``source``)."""
    import typing

    hints = typing.get_type_hints(PrismArguments)
    prefix = f"{source}: " if source else ""
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{prefix}unknown key {key!r}{did_you_mean(key, hints)}")
        kinds = _kinds(hints[key])
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(dict.fromkeys("null" if kind is type(None) else kind.__name__ for kind in kinds
                                              if not (kind is int and float in kinds)))
            raise ConfigError(f"{prefix}{key}: expected {names}, got {value!r}")
    try:
        return PrismArguments(**values)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None
