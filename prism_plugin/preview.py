"""A dry run of one PRISM alignment step (method.md §3, steps 1-4) on real checkpoints.

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


def load_policy_processor(policy_dir: str | Path, vision: bool, **kwargs: Any) -> Any:
    """What renders prompts for the policy in ``policy_dir``: its processor (vision) or tokenizer (text)."""
    from transformers import AutoProcessor, AutoTokenizer

    return (AutoProcessor if vision else AutoTokenizer).from_pretrained(policy_dir, **kwargs)


def load_policy(policy_dir: str | Path) -> tuple[Any, Any, bool]:
    """The policy in ``policy_dir`` (vision-language or text-only), its processor, and whether it has vision."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(policy_dir)
    vision = hasattr(config, "vision_config")
    model_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    return model_class.from_pretrained(policy_dir), load_policy_processor(policy_dir, vision), vision


def policy_batch_inputs(
    processor: Any, vision: bool, prompts: Sequence[tuple[str, Sequence[str]]]
) -> dict[str, torch.Tensor]:
    """Model inputs for (prompt, image paths) pairs: the PRISM system prompt and the chat template, left-padded.

    Left padding lets one ``generate`` call continue every prompt from the same last column.
    """
    from prism_plugin.discriminator.texts import chat_prompt_text, load_images

    tokenizer = getattr(processor, "tokenizer", processor)
    texts, loaded = [], []
    for prompt, images in prompts:
        row_images = load_images(list(images)) if vision else []
        texts.append(chat_prompt_text(tokenizer, prompt, len(row_images), vision))
        loaded += row_images
    padding = len(texts) > 1
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        if loaded:
            return dict(processor(text=texts, images=loaded, return_tensors="pt", padding=padding))
        return dict(tokenizer(texts, return_tensors="pt", add_special_tokens=False, padding=padding))
    finally:
        tokenizer.padding_side = side


def _policy_inputs(processor: Any, vision: bool, prompt: str, images: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return policy_batch_inputs(processor, vision, [(prompt, images)])


def sample_responses(
    policy: Any,
    processor: Any,
    prompts: Sequence[tuple[str, Sequence[str]]],
    *,
    vision: bool,
    num_generations: int,
    max_new_tokens: int,
    temperature: float = 1.0,
) -> Any:
    """``num_generations`` samples per (prompt, image paths) pair from one ``generate`` call, split into segments.

    Returns the :class:`prism_plugin.format.SegmentBatch` of the completions, prompt-major
    (``num_generations`` rows per prompt). Vision special tokens are suppressed; sampling uses the
    global torch RNG. The caller puts the policy in eval mode and disables gradients.
    """
    from prism_plugin.format import split_segments
    from prism_plugin.generation import completion_mask, end_of_turn_id, vision_suppress_ids

    tokenizer = getattr(processor, "tokenizer", processor)
    eos_id = end_of_turn_id(tokenizer)
    suppress = vision_suppress_ids(tokenizer)
    device = next(policy.parameters()).device
    inputs = {k: v.to(device) for k, v in policy_batch_inputs(processor, vision, prompts).items()}
    out = policy.generate(
        **inputs, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
        max_new_tokens=max_new_tokens, num_return_sequences=num_generations, use_cache=True,
        suppress_tokens=suppress or None, eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id,
    )
    completions = out[:, inputs["input_ids"].shape[1]:].cpu()
    return split_segments(completions, tokenizer, completion_mask(completions, eos_id), eos_token_ids=eos_id)


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

    The one rollout-and-score path behind ``align-preview`` and the SFT drift monitor: prompts are
    rendered with the PRISM system prompt and the processor's chat template (the same ids as the
    ``prism_qwen3_vl`` template), vision special tokens are suppressed, and the discriminator scores
    the samples and each prompt's teacher demonstration in one call. Sampling uses the global torch
    RNG; the policy runs in eval mode under ``no_grad`` and gets its train/eval mode back.
    """
    segments = list(segments or discriminator.config.segments)
    was_training = policy.training
    policy.eval()

    try:
        with torch.no_grad():  # every prompt's samples from one left-padded generate call
            split = sample_responses(policy, processor, [(r.prompt, r.images) for r in records], vision=vision,
                                     num_generations=num_generations, max_new_tokens=max_new_tokens,
                                     temperature=temperature)
    finally:
        policy.train(was_training)

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
    format_penalty: float = 1.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Run steps 1-4 of one alignment step on ``num_prompts`` prompts of ``align_file``; no update."""
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401  (registers the Auto classes)
    from prism_plugin.advantage import segment_advantage
    from prism_plugin.data.records import load_align
    from prism_plugin.losses import discriminator_loss
    from prism_plugin.rewards import compute_score

    weights = dict(weights or {"caption": 0.5, "reasoning": 0.5})
    torch.manual_seed(seed)
    records = load_align(align_file).records[:num_prompts]
    policy, processor, vision = load_policy(policy_dir)
    policy.eval()
    disc = AutoModel.from_pretrained(discriminator_dir).eval()

    segments = [s for s in weights]
    scored = sample_and_score(policy, processor, disc, records, vision=vision, num_generations=num_generations,
                              max_new_tokens=max_new_tokens, temperature=temperature, segments=segments)
    rollouts, student, teacher, valid = scored.rollouts, scored.student, scored.teacher, scored.valid
    advantages = segment_advantage(student, weights, valid, scored.group, format_penalty=format_penalty)
    loss, metrics = discriminator_loss(
        {s: torch.nan_to_num(t) for s, t in teacher.items()}, {s: torch.nan_to_num(v) for s, v in student.items()},
        valid,
    )
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
