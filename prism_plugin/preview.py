"""A dry run of one PRISM alignment step (Wang et al. 2026, §3, steps 1-4) on real checkpoints.

Rollouts from the policy -> layout check and segments -> discriminator scores -> group
advantages -> the discriminator's Bradley-Terry loss -> the verifiable reward, with no update.
It shows what the alignment stage would feed its optimizers, per rollout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prism_plugin.advantage import FORMAT_PENALTY
from prism_plugin.errors import ConfigError, check_at_least_one
from prism_plugin.rollout import Sampling


@dataclass
class ScoredRollouts:
    """Policy samples for alignment prompts, split into segments and scored beside the teacher's.

    Rows are ordered prompt by prompt, ``num_generations`` samples each; ``group`` gives each
    sample's prompt index and ``teacher`` the score of that prompt's teacher demonstration.
    """

    rollouts: list[dict[str, Any]]  # per sample: group, valid, truncated, tokens, caption_tokens, text
    student: dict[str, torch.Tensor]  # segment -> (N,) scores, NaN where the layout is invalid
    teacher: dict[str, torch.Tensor]  # segment -> (N,) score of the sample's teacher demonstration
    valid: torch.Tensor  # (N,) bool
    group: torch.Tensor  # (N,) prompt index


def sample_and_score(
    policy: Any,
    processor: Any,
    discriminator: Any,
    records: Sequence[Any],
    *,
    vision: bool,
    num_generations: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    segments: Sequence[str] | None = None,
) -> ScoredRollouts:
    """Sample ``num_generations`` responses per align record from ``policy``, split and score them.

    The one rollout-and-score path behind ``align-preview`` and the SFT drift monitor: samples from
    :func:`prism_plugin.policy.sample`, then the discriminator scores the samples and each prompt's
    teacher demonstration in one call. Sampling uses the global torch RNG; the policy runs in eval
    mode under ``no_grad`` and gets its train/eval mode back.
    """
    from prism_plugin.policy import sample

    segments = list(segments or discriminator.config.segments)
    _, split = sample(policy, processor, vision, records, num_generations, Sampling(max_new_tokens, temperature))

    rollouts: list[dict[str, Any]] = []
    prompts, responses, images = [], [], []
    for group, record in enumerate(records):
        rows = range(group * num_generations, (group + 1) * num_generations)
        for i in rows:
            rollouts.append({"group": group, "valid": bool(split.valid[i]), "truncated": bool(split.truncated[i]),
                             "tokens": int(split.lengths[i]), "caption_tokens": int(split.boundary[i]),
                             "text": split.texts[i]})
        # the G rollouts, then the teacher demonstration, of this prompt
        prompts += [record.prompt] * (num_generations + 1)
        responses += [split.texts[i] for i in rows] + [record.teacher.response]
        images += [list(record.images)] * (num_generations + 1)

    with torch.no_grad():
        scores = discriminator.score_texts(prompts, responses, images if vision and discriminator.config.is_vision
                                           else None)
    per_group = num_generations + 1
    starts = torch.arange(len(records)).repeat_interleave(num_generations) * per_group
    rollout_rows = starts + torch.arange(num_generations).repeat(len(records))
    teacher_rows = starts + num_generations
    valid = torch.tensor([r["valid"] for r in rollouts], dtype=torch.bool)
    nan = torch.tensor(float("nan"))
    return ScoredRollouts(
        rollouts=rollouts,
        # a rollout truncated at the token limit may still read as a complete layout once re-tokenised
        # with an end-of-turn token: the policy's own split decides validity, as in the alignment stage
        student={s: torch.where(valid, scores[s][rollout_rows], nan) for s in segments},
        teacher={s: scores[s][teacher_rows] for s in segments},
        valid=valid,
        group=torch.tensor([r["group"] for r in rollouts], dtype=torch.long),
    )


def preview_alignment_step(
    policy_dir: str | Path,
    discriminator_dir: str | Path,
    align_file: str | Path,
    *,
    num_prompts: int = 2,
    num_generations: int = 4,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    weights: Mapping[str, float] | None = None,
    format_penalty: float = FORMAT_PENALTY,
    seed: int = 0,
) -> dict[str, Any]:
    """Run steps 1-4 of one alignment step on ``num_prompts`` prompts of ``align_file``; no update."""
    from prism_plugin.advantage import segment_advantage
    from prism_plugin.data.records import load_align
    from prism_plugin.discriminator.loading import load_discriminator
    from prism_plugin.losses import discriminator_loss
    from prism_plugin.policy import load_policy
    from prism_plugin.rewards import compute_score

    check_at_least_one(("--num-prompts", num_prompts), ("--max-new-tokens", max_new_tokens))
    if num_generations < 2:
        raise ConfigError(f"--num-generations must be at least 2 (advantages compare a prompt's rollouts); got "
                          f"{num_generations}")
    torch.manual_seed(seed)
    records = load_align(align_file, limit=num_prompts).records
    disc = load_discriminator(discriminator_dir).eval()
    weights = dict(weights or {s: 1.0 / len(disc.config.segments) for s in disc.config.segments})
    policy, processor, vision = load_policy(policy_dir)

    segments = [s for s in weights]
    scored = sample_and_score(policy, processor, disc, records, vision=vision, num_generations=num_generations,
                              max_new_tokens=max_new_tokens, temperature=temperature, segments=segments)
    rollouts, student, teacher, valid = scored.rollouts, scored.student, scored.teacher, scored.valid
    advantages = segment_advantage(student, weights, valid, scored.group, format_penalty=format_penalty)
    # the regulariser over the valid rows only: the preview does not score invalid rollouts' halves
    loss, metrics = discriminator_loss(teacher, student, valid, clip=disc.config.score_clip, reg_rows="valid")
    for i, row in enumerate(rollouts):
        record = records[row["group"]]
        row["advantage"] = float(advantages[i])
        row.update({f"{s}_score": float(student[s][i]) for s in segments})
        row["reward"] = compute_score(row["text"], record.ground_truth or "")["overall"]
    summary = {
        "prompts": len(records),
        "rollouts": len(rollouts),
        "valid_ratio": float(valid.float().mean()),
        "mean_response_tokens": float(sum(r["tokens"] for r in rollouts) / len(rollouts)),
        "teacher_score": {s: float(teacher[s][::num_generations].mean()) for s in segments},
        "discriminator_loss": float(loss),
        "discriminator_metrics": metrics,
        "advantage_mean": float(advantages.mean()),
        "advantage_std": float(advantages.std()) if len(rollouts) > 1 else 0.0,
        "reward_mean": sum(r["reward"] for r in rollouts) / len(rollouts),
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
        cells += [f"{r['advantage']:+.3f}", f"{r['reward']:.2f}", text[:60] + ("…" if len(text) > 60 else "")]
        lines.append(" | ".join(cells))
    s = result["summary"]
    lines.append("")
    lines.append(
        f"valid {s['valid_ratio']:.0%} of {s['rollouts']} rollouts, mean {s['mean_response_tokens']:.0f} tokens; "
        f"teacher score {', '.join(f'{k} {v:+.3f}' for k, v in s['teacher_score'].items())}; "
        f"discriminator loss {s['discriminator_loss']:.4f} over {s['discriminator_metrics']['num_pairs']:.0f} pairs; "
        f"reward mean {s['reward_mean']:.3f}"
    )
    return "\n".join(lines)
