"""A dry run of one PRISM alignment step (Wang et al. 2026, §3) on real checkpoints, through the step's own path.

Rollouts from the policy, split on its own ids, make the :class:`~prism_plugin.scorers.RolloutBatch` the step
scores; :meth:`DiscriminatorScorer.dry_run` gives the scores and the discriminator loss the step's update would
take (the same rows and settings: ``prism_score_reg_rows`` and the rest); then the group advantages and the
verifiable reward. Nothing is updated. :func:`rollout_batch` is also the drift monitor's sampler, so a
preview, a drift check and a training step score a batch the one way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prism_plugin.errors import ConfigError, check_at_least_one
from prism_plugin.rollout import RolloutEngine, Sampling
from prism_plugin.scorers import AlignPrompt, RolloutBatch, Scorer

PREVIEW_NUM_GENERATIONS, PREVIEW_MAX_NEW_TOKENS = 4, 64  # a quick look, unless a run's config says otherwise
PREVIEW_CUTOFF_LEN = 2048  # LLaMA-Factory's default cutoff_len


def rollout_batch(policy: Any, processor: Any, vision: bool, records: Sequence[Any], scorer: Scorer,
                  num_generations: int, sampling: Sampling, source: str,
                  engine: RolloutEngine | None = None) -> RolloutBatch:
    """``num_generations`` rollouts of each record from ``policy``, split into segments, with what ``scorer``
    prepares of each row: the batch an alignment step would score."""
    from prism_plugin.policy import render_prompts, sample_prompts

    prompts = render_prompts(processor, vision, records)
    tokenizer = getattr(processor, "tokenizer", processor)
    rollouts, split = sample_prompts(policy, tokenizer, prompts, num_generations, sampling, engine)
    align = [AlignPrompt(prompt, record.teacher, record.ground_truth, record.row, source,
                         scorer.prepare(record, source)) for prompt, record in zip(prompts, records, strict=True)]
    return RolloutBatch(align, rollouts, split)


def discriminator_scorer(discriminator: Any, processor: Any, settings: Any, cutoff_len: int,
                         segments: Sequence[str] | None = None) -> Any:
    """The alignment step's discriminator scorer (no updater) for ``settings`` (the ``prism_*`` keys), scoring
    ``segments`` (default ``prism_segments``)."""
    from prism_plugin.discriminator.loss import DiscriminatorLoss
    from prism_plugin.discriminator.rendering import TextScorer
    from prism_plugin.discriminator.rollout_scorer import DiscriminatorScorer

    return DiscriminatorScorer(TextScorer(discriminator), list(segments or settings.prism_segments),
                               policy_tokenizer=getattr(processor, "tokenizer", processor), cutoff_len=cutoff_len,
                               loss=DiscriminatorLoss.from_args(settings, discriminator.config))


def run_settings(config: str | Path | None, **overrides: Any) -> tuple[Any, int]:
    """The ``prism_*`` keys (and ``cutoff_len``) of a LLaMA-Factory YAML, checked as the run checks them, with
    ``overrides`` (None: not given) on top; without a YAML the keys' defaults and a quick preview's sizes."""
    from prism_plugin.arguments import prism_arguments

    values: dict[str, Any] = {}
    cutoff_len = PREVIEW_CUTOFF_LEN
    if config is not None:
        import yaml

        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"--config: no such file {path}")
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        values = {key: value for key, value in raw.items() if key.startswith("prism_")}
        cutoff_len = int(raw.get("cutoff_len", cutoff_len))
    else:
        values = {"prism_num_generations": PREVIEW_NUM_GENERATIONS, "prism_max_new_tokens": PREVIEW_MAX_NEW_TOKENS}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return prism_arguments(values, source=str(config) if config else "align-preview"), cutoff_len


def preview_alignment_step(
    policy_dir: str | Path,
    discriminator_dir: str | Path,
    align_file: str | Path,
    *,
    num_prompts: int = 2,
    config: str | Path | None = None,
    num_generations: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One alignment step's rollouts, scores, discriminator loss, advantages and rewards on ``num_prompts``
    prompts of ``align_file``, with the settings of the run ``config`` (a LLaMA-Factory YAML; the keys'
    defaults without one) and the given overrides; nothing is updated."""
    from prism_plugin.advantage import segment_advantage
    from prism_plugin.data.records import load_align
    from prism_plugin.discriminator.loading import load_discriminator
    from prism_plugin.policy import load_policy
    from prism_plugin.rng import SamplingStream
    from prism_plugin.rollout import HFRolloutEngine

    check_at_least_one(("--num-prompts", num_prompts), ("--max-new-tokens", max_new_tokens))
    if num_generations is not None and num_generations < 2:
        raise ConfigError(f"--num-generations must be at least 2 (advantages compare a prompt's rollouts); got "
                          f"{num_generations}")
    settings, cutoff_len = run_settings(config, prism_num_generations=num_generations,
                                        prism_max_new_tokens=max_new_tokens, prism_temperature=temperature)
    records = load_align(align_file, limit=num_prompts).records
    disc = load_discriminator(discriminator_dir).eval()
    if config is None:  # the discriminator's own segments, equally weighted, as a run would set them for it
        settings.prism_segments = list(disc.config.segments)
        settings.prism_segment_weights = [1.0 / len(disc.config.segments)] * len(disc.config.segments)
    policy, processor, vision = load_policy(policy_dir)
    scorer = discriminator_scorer(disc, processor, settings, cutoff_len)
    engine = HFRolloutEngine(getattr(processor, "tokenizer", processor))
    engine.rng = SamplingStream(seed)
    batch = rollout_batch(policy, processor, vision, records, scorer, settings.prism_num_generations,
                          Sampling(settings.prism_max_new_tokens, settings.prism_temperature), str(align_file), engine)
    scores, loss = scorer.dry_run(batch)
    weights = settings.segment_weights
    advantages = segment_advantage({s: scores.rollout[s] for s in weights}, weights, scores.valid, batch.group_index,
                                   format_penalty=settings.prism_format_penalty,
                                   scale=settings.prism_scale_advantages)
    split, rewards = batch.split, batch.rewards
    rollouts = []
    for i, text in enumerate(batch.texts):
        row = {"group": int(batch.group_index[i]), "valid": bool(scores.valid[i]),
               "truncated": bool(split.truncated[i]), "tokens": int(split.lengths[i]),
               "caption_tokens": int(split.boundary[i]), "text": text,
               "advantage": float(advantages[i])}
        row.update({f"{s}_score": float(scores.rollout[s][i]) for s in weights})
        if rewards is not None:
            row["reward"] = float(rewards["overall"][i])
        rollouts.append(row)
    summary = {
        "prompts": len(records),
        "rollouts": len(rollouts),
        "valid_ratio": float(scores.valid.float().mean()),
        "mean_response_tokens": float(sum(r["tokens"] for r in rollouts) / len(rollouts)),
        "teacher_score": {s: float(scores.teacher[s].mean()) for s in weights},
        "discriminator_loss": loss.pop("disc/loss", None),  # None: no pair trains (prism_no_valid_pair: skip)
        "discriminator_pairs": int(scores.valid.sum()),
        "discriminator_metrics": loss,
        "advantage_mean": float(advantages.mean()),
        "advantage_std": float(advantages.std()) if len(rollouts) > 1 else 0.0,
        "reward_mean": float(rewards["overall"].mean()) if rewards is not None else None,
        "settings": {key: value for key, value in vars(settings).items() if key.startswith("prism_")},
    }
    return {"summary": summary, "rollouts": rollouts}


def format_preview(result: Mapping[str, Any]) -> str:
    """A plain-text table of a :func:`preview_alignment_step` result."""
    rows = result["rollouts"]
    segments = [k[: -len("_score")] for k in rows[0] if k.endswith("_score")] if rows else []
    head = ["grp", "valid", "tokens"] + [f"{s} score" for s in segments] + ["advantage", "reward", "response"]
    lines = [" | ".join(head)]
    for r in rows:
        cells = [str(r["group"]), "yes" if r["valid"] else ("trunc" if r["truncated"] else "no"), str(r["tokens"])]
        cells += [f"{r[f'{s}_score']:+.3f}" if r["valid"] else "-" for s in segments]
        text = r["text"].replace("\n", " ")
        reward = f"{r['reward']:.2f}" if "reward" in r else "-"
        cells += [f"{r['advantage']:+.3f}", reward, text[:60] + ("…" if len(text) > 60 else "")]
        lines.append(" | ".join(cells))
    s = result["summary"]
    lines.append("")
    lines.append(
        f"valid {s['valid_ratio']:.0%} of {s['rollouts']} rollouts, mean {s['mean_response_tokens']:.0f} tokens; "
        f"teacher score {', '.join(f'{k} {v:+.3f}' for k, v in s['teacher_score'].items())}; "
        + (f"discriminator loss {s['discriminator_loss']:.4f} over {s['discriminator_pairs']} pairs"
           if s["discriminator_loss"] is not None else "no discriminator loss (no valid pair)")
        + (f"; reward mean {s['reward_mean']:.3f}" if s["reward_mean"] is not None else "")
    )
    return "\n".join(lines)
