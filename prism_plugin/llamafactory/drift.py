"""The PRISM discriminator as a drift monitor in any LLaMA-Factory run (``stage: sft`` and the like).

SFT teaches the policy the teacher's responses token by token, yet what the policy *samples*
drifts away from them; that gap is what the PRISM alignment stage repairs. With
``prism_drift_monitor: DISCRIMINATOR_DIR`` and ``prism_drift_data: HELD_OUT_PROMPTS`` in a stock
YAML, :class:`DriftMonitorCallback` samples from the model being trained every
``prism_drift_every`` optimizer steps (and at the last step), scores the samples and the teacher
demonstrations with the discriminator, and logs the per-segment teacher − policy score gap and
the valid-layout ratio as ``drift/*`` metrics through the Trainer's own ``log`` — so they reach the
``report_to`` integrations and ``trainer_state.json`` alike — then plots them to
``output_dir/training_drift.png``.

Sampling and scoring take the alignment step's own path (:func:`prism_plugin.preview.rollout_batch`,
then the discriminator scorer), as ``prism-plugin align-preview`` does. It runs on the main process
alone, with no collectives (the other ranks simply wait at their next synchronisation), so it needs
the full weights on rank 0: DeepSpeed ZeRO-3 and FSDP are refused with a clear error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from prism_plugin.arguments import PrismArguments

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from prism_plugin.data.records import PromptRecord
    from prism_plugin.scorers import RolloutBatch, Scores

PREFIX = "drift/"
MARKER = "drift/valid_ratio"  # present in every drift entry of the log history
PLOT_NAME = "training_drift.png"
SCORE_ANY_LENGTH = 1 << 30  # the held-out rows were checked when read; a check scores what it samples


@dataclass
class _StockKeys:
    """The stock LLaMA-Factory keys the monitor reads besides its own ``prism_drift_*`` keys."""

    model_name_or_path: str | None = None
    trust_remote_code: bool = False
    media_dir: str | None = None


def parse_drift_args(args: dict[str, Any] | list[str] | tuple[str, ...]) -> tuple[PrismArguments, _StockKeys]:
    """The PRISM and stock keys of a LLaMA-Factory argument dict (YAML) or command-line list.

    ``PrismArguments`` validates them (``prism_drift_monitor`` without ``prism_drift_data`` is an error).
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser([PrismArguments, _StockKeys])
    if isinstance(args, dict):
        prism, stock = parser.parse_dict(args, allow_extra_keys=True)
    else:
        prism, stock, _ = parser.parse_args_into_dataclasses(args=[str(a) for a in args],
                                                             return_remaining_strings=True)
    return prism, stock


def make_drift_monitor(args: dict[str, Any] | list[str] | tuple[str, ...]) -> DriftMonitorCallback:
    """A :class:`DriftMonitorCallback` built from the run's arguments.

    Checks the settings and reads the held-out prompts now, on every rank, so that a bad key or
    file stops the run before any model is loaded.
    """
    from prism_plugin.data.records import load_align

    prism, stock = parse_drift_args(args)  # PrismArguments validates the keys (counts >= 1, data given)
    report = load_align(prism.prism_drift_data, skip_invalid=prism.prism_skip_invalid_rows, media_dir=stock.media_dir,
                        limit=prism.prism_drift_num_prompts)
    return DriftMonitorCallback(
        prism.prism_drift_monitor,
        report.records,
        settings=prism,
        source=prism.prism_drift_data,
        every=prism.prism_drift_every,
        num_generations=prism.prism_drift_num_generations,
        max_new_tokens=prism.prism_drift_max_new_tokens,
        temperature=prism.prism_temperature,
        policy_source=stock.model_name_or_path,
        trust_remote_code=stock.trust_remote_code,
    )


def drift_metrics(batch: RolloutBatch, scores: Scores) -> dict[str, float]:
    """``drift/*`` numbers of one check; a segment's policy score and gap only when a sample is valid.

    ``{segment}_gap`` pairs each valid sample with its own prompt's teacher demonstration
    (mean of teacher − sample), so prompts that happen to yield valid samples do not bias it;
    ``teacher_{segment}_score`` is the teacher's mean over all checked prompts.
    """
    valid = scores.valid
    metrics = {
        MARKER: float(valid.float().mean()),
        f"{PREFIX}truncated_ratio": float(batch.split.truncated.float().mean()),
        f"{PREFIX}response_tokens": float(batch.split.lengths.float().mean()),
    }
    for segment, student in scores.rollout.items():
        teacher = scores.teacher[segment]
        values = {
            f"{PREFIX}teacher_{segment}_score": teacher,
            f"{PREFIX}{segment}_policy_score": student[valid],
            f"{PREFIX}{segment}_gap": (teacher[batch.group_index] - student)[valid],
        }
        for key, value in values.items():
            mean = float(value.nanmean()) if value.numel() else math.nan
            if math.isfinite(mean):
                metrics[key] = mean
    return metrics


def plot_drift(log_history: list[dict[str, Any]], output_dir: str | Path) -> Path | None:
    """Draw the gap curves and the valid ratio of the ``drift/*`` log entries; ``None`` without any."""
    from matplotlib.figure import Figure

    entries = [e for e in log_history if MARKER in e]
    if not entries:
        return None
    fig = Figure(figsize=(7, 6), layout="constrained")
    gap_ax, valid_ax = fig.subplots(2, 1, sharex=True)
    gap_keys = sorted({k for e in entries for k in e if k.startswith(PREFIX) and k.endswith("_gap")})
    for key in gap_keys:
        points = [(e["step"], e[key]) for e in entries if key in e]
        gap_ax.plot(*zip(*points, strict=True), marker="o", label=key[len(PREFIX):])
    gap_ax.axhline(0.0, color="grey", linewidth=0.8)
    gap_ax.set_ylabel("teacher − policy score")
    gap_ax.set_title("Discriminator drift monitor")
    if gap_keys:
        gap_ax.legend()
    valid_ax.plot([e["step"] for e in entries], [e[MARKER] for e in entries], marker="o", color="tab:green")
    valid_ax.set_ylim(-0.05, 1.05)
    valid_ax.set_ylabel("valid-layout ratio")
    valid_ax.set_xlabel("step")
    path = Path(output_dir) / PLOT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def _refuse_sharded_weights(args: TrainingArguments) -> None:
    import os

    from transformers.integrations import is_deepspeed_zero3_enabled

    fsdp = bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    if is_deepspeed_zero3_enabled() or fsdp:
        raise ValueError(
            "prism_drift_monitor samples on the main process alone and needs the full weights there; "
            "it does not support DeepSpeed ZeRO-3 or FSDP (use DDP or ZeRO-0/1/2, or drop prism_drift_monitor)"
        )


class DriftMonitorCallback(TrainerCallback):
    """Every ``every`` optimizer steps and at the last step, measure how far the policy's samples drift.

    Only the world's main process measures: it samples ``num_generations`` responses per held-out
    record from the model being trained (eval mode, no grad, train mode restored), scores them with
    the discriminator and hands the ``drift/*`` metrics to the next ``Trainer.log`` of that step (see
    :mod:`prism_plugin.llamafactory.trainer_log`; the check asks for that log). Every check samples from
    the same seed (the run's ``seed``) in a sampling stream of its own: the training run's random stream
    is untouched and successive checks differ by the model, not by sampling noise.
    """

    def __init__(
        self,
        discriminator: str | Path,
        records: list[PromptRecord],
        *,
        every: int,
        num_generations: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        settings: PrismArguments | None = None,
        source: str = "drift data",
        policy_source: str | Path | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        """``settings``: the run's ``prism_*`` keys (the discriminator's score clip); ``source``: where the
        records were read from (for messages)."""
        self.discriminator_path = str(discriminator)
        self.settings = settings or PrismArguments()
        self.source = source
        self.records = list(records)
        self.every = every
        self.num_generations = num_generations
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.policy_source = policy_source
        self.trust_remote_code = trust_remote_code
        self._discriminator: Any = None
        self._processor: Any = None
        self._last_step = -1
        self.pending: dict[str, float] = {}

    # ----------------------------------------------------------------- Trainer events

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        _refuse_sharded_weights(args)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        # a resumed run already holds the checks up to its checkpoint
        self._last_step = max((e["step"] for e in state.log_history if MARKER in e), default=-1)
        if state.is_world_process_zero:
            self._load(kwargs["model"])  # fail before the first step, not at the first check

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl:
        last = state.max_steps > 0 and state.global_step >= state.max_steps
        if (state.global_step % self.every == 0 or last) and self._check(args, state, kwargs["model"]):
            control.should_log = True
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if state.is_world_process_zero:
            path = plot_drift(state.log_history, args.output_dir)
            if path is not None:
                _logger().info(f"drift plot saved at {path}")

    def take_pending(self) -> dict[str, float]:
        """The metrics of the last check not yet logged (empty on other ranks and between checks)."""
        pending, self.pending = self.pending, {}
        return pending

    # ----------------------------------------------------------------- the check

    def _load(self, model: Any) -> tuple[Any, Any, bool]:
        """The unwrapped policy, its processor and whether it sees images; loads the scorer once."""
        from accelerate.utils import extract_model_from_parallel

        from prism_plugin.discriminator.loading import load_discriminator
        from prism_plugin.policy import is_vision_config, load_processor

        policy = extract_model_from_parallel(model)
        vision = is_vision_config(policy.config)
        if self._discriminator is None:
            self._discriminator = load_discriminator(self.discriminator_path).eval()
        if self._processor is None:
            source = self.policy_source or policy.name_or_path
            self._processor = load_processor(source, vision, trust_remote_code=self.trust_remote_code)
        return policy, self._processor, vision

    def _check(self, args: TrainingArguments, state: TrainerState, model: Any) -> bool:
        """Measure once at this step on the main process; True when there are new metrics to log."""
        if not state.is_world_process_zero or state.global_step == self._last_step:
            return False
        self._last_step = state.global_step
        started = time.perf_counter()
        metrics = self.measure(model, seed=args.seed)
        metrics[f"{PREFIX}seconds"] = round(time.perf_counter() - started, 3)
        self.pending = metrics
        shown = ", ".join(f"{k[len(PREFIX):]}={v:.4g}" for k, v in metrics.items())
        _logger().info(f"drift at step {state.global_step}: {shown}")
        return True

    def measure(self, model: Any, seed: int = 0) -> dict[str, float]:
        """Sample, score and summarise once (see :func:`drift_metrics`); the discriminator visits the
        policy's device for the scoring and goes back to the CPU, so it holds no accelerator memory
        between checks."""
        from prism_plugin.preview import discriminator_scorer, rollout_batch
        from prism_plugin.rng import SamplingStream
        from prism_plugin.rollout import HFRolloutEngine, Sampling

        policy, processor, vision = self._load(model)
        device = next(policy.parameters()).device
        disc = self._discriminator.to(device)
        try:
            scorer = discriminator_scorer(disc, processor, self.settings, SCORE_ANY_LENGTH, disc.config.segments)
            engine = HFRolloutEngine(getattr(processor, "tokenizer", processor))
            engine.rng = SamplingStream(seed)  # the same samples' noise at every check, the run's stream untouched
            batch = rollout_batch(policy, processor, vision, self.records, scorer, self.num_generations,
                                  Sampling(self.max_new_tokens, self.temperature), self.source, engine)
            scores = scorer.score(batch)
        finally:
            self._discriminator = disc.to("cpu")
        return drift_metrics(batch, scores)


def _logger() -> Any:
    from llamafactory.extras import logging

    return logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's configured root logger
