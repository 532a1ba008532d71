"""``PrismAlignTrainer``: the PRISM alignment game (method.md §3) on a transformers ``Trainer``.

Per batch of B prompts: G rollouts each from the current policy (HF ``generate``), layout check
and segments (:func:`prism_plugin.format.split_segments`), segment scores from the current
discriminator (eval mode, no grad, clipped), group advantages
(:func:`prism_plugin.advantage.segment_advantage`), one discriminator step on teacher ≻ rollout
(Bradley–Terry + score regulariser + router aux), then ``prism_policy_epochs`` policy updates
with a registered policy loss. The policy's optimiser, scheduler, accumulation, DeepSpeed,
logging and checkpoints are the Trainer's; the discriminator has its own AdamW.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer
from transformers.utils import logging

from prism_plugin.advantage import segment_advantage
from prism_plugin.discriminator.scoring import SegmentQuery, score, score_with_aux
from prism_plugin.format import split_segments
from prism_plugin.generation import completion_mask, end_of_turn_id, vision_suppress_ids
from prism_plugin.llamafactory.align_data import AlignItem
from prism_plugin.llamafactory.align_rewards import RuleScorer, verifiable_rewards
from prism_plugin.llamafactory.metrics import MetricsLogMixin
from prism_plugin.losses import discriminator_loss, get_policy_loss, pairwise_wins

DISCRIMINATOR_DIR = "discriminator"
DISC_STATE_FILE = "prism_disc_state.pt"
logger = logging.get_logger(__name__)



@dataclass
class AlignSettings:
    """What one alignment step needs beyond the Trainer's own arguments (the ``prism_*`` keys)."""

    segment_weights: dict[str, float]
    num_generations: int = 16
    max_new_tokens: int = 6144
    temperature: float = 1.0
    format_penalty: float = 1.5
    scale_advantages: bool = True
    score_clip: float = 10.0
    score_reg_coef: float = 0.001
    router_aux_coef: float = 0.01
    update_discriminator: bool = True
    disc_update_every: int = 1
    disc_max_grad_norm: float = 1.0
    policy_loss: str = "grpo"
    clip_low: float = 0.2
    clip_high: float | None = None
    policy_epochs: int = 1
    min_disc_accuracy: float = 0.0


def _ids_list(ids: Any) -> list[int]:
    """Token ids (tensor or sequence) as a plain list, for exact comparison."""
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


@dataclass
class RolloutGroup:
    """The G rollouts of one prompt, ready for the policy loss."""

    input_ids: torch.Tensor  # (G, P + T)
    attention_mask: torch.Tensor  # (G, P + T)
    completion_mask: torch.Tensor  # (G, T): response tokens up to the first end-of-turn
    mm_inputs: dict[str, torch.Tensor]
    advantages: torch.Tensor  # (G,)
    old_log_probs: torch.Tensor | None  # (G, T), None when the policy takes one step per batch
    gated: bool = False  # the discriminator lost to the policy on this batch: no policy update from it


class PrismAlignTrainer(MetricsLogMixin, Trainer):
    """Policy trainer of the alignment stage; owns the discriminator and its optimiser."""

    # The discriminator update scores through the shared-prefix path; False runs one padded full
    # forward over every (prompt ⊕ segment) row instead (same loss and gradients; a reference).
    disc_reuse_prefix: bool = True

    def __init__(
        self,
        *args: Any,
        discriminator: torch.nn.Module | None,
        disc_optimizer: torch.optim.Optimizer | None,
        disc_tokenizer: Any,
        settings: AlignSettings,
        same_vocab: bool,
        rule_scorer: RuleScorer | None = None,
        **kwargs: Any,
    ) -> None:
        """Scores come from ``discriminator``, or from ``rule_scorer`` when one is given (then
        ``discriminator`` is None and nothing but the policy trains)."""
        super().__init__(*args, **kwargs)
        self.discriminator = discriminator
        self.rule_scorer = rule_scorer
        self.disc_optimizer = disc_optimizer
        self.disc_tokenizer = disc_tokenizer
        self.settings = settings
        self.same_vocab = same_vocab
        self.segments = list(settings.segment_weights)
        self.policy_loss_fn = get_policy_loss(settings.policy_loss)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.policy_tokenizer = tokenizer
        self.eot_id = end_of_turn_id(tokenizer)
        self.suppress_ids = vision_suppress_ids(tokenizer)
        self.model_accepts_loss_kwargs = False
        self._buffer: dict[int, list[RolloutGroup]] = {}
        self._micro_step = 0
        self._rollout_batches = 0
        self.nonfinite_skips = {"scores": 0, "disc_loss": 0, "policy_loss": 0}
        self._init_metrics()

    # ------------------------------------------------------------------ data plumbing

    def _prepare_inputs(self, items: list[AlignItem]) -> list[RolloutGroup]:
        """Fresh rollouts every ``policy_epochs`` optimiser steps; reused (with their old log-probs) between."""
        accumulation = self.args.gradient_accumulation_steps
        slot = self._micro_step % accumulation
        self._micro_step += 1
        if self.state.global_step % self.settings.policy_epochs == 0 or slot not in self._buffer:
            self._buffer[slot] = self._generate_and_score(items)
        return self._buffer[slot]

    # ------------------------------------------------------------------ one alignment step

    @torch.no_grad()
    def _rollouts(self, items: list[AlignItem]) -> list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
        """G sampled completions per prompt, from one ``generate`` call over the left-padded prompts.

        Returns, per prompt: completions (G, T), their mask (up to the first end-of-turn token) and the
        prompt's multimodal inputs repeated for its G rollouts.
        """
        policy = self.accelerator.unwrap_model(self.model)
        device = self.accelerator.device
        G = self.settings.num_generations
        width = max(len(item.prompt_ids) for item in items)
        prompts = torch.full((len(items), width), self.policy_tokenizer.pad_token_id or 0, dtype=torch.long)
        attention = torch.zeros_like(prompts)
        for k, item in enumerate(items):
            prompts[k, width - len(item.prompt_ids):] = torch.tensor(item.prompt_ids)
            attention[k, width - len(item.prompt_ids):] = 1
        prompts, attention = prompts.to(device), attention.to(device)
        per_item = [self._mm_inputs(policy, item, device) for item in items]
        batch_mm = {key: torch.cat([mm[key] for mm in per_item if key in mm])
                    for key in ("pixel_values", "image_grid_thw") if any(key in mm for mm in per_item)}
        if "pixel_values" in batch_mm and hasattr(policy.config, "image_token_id"):
            batch_mm["mm_token_type_ids"] = (prompts == policy.config.image_token_id).long()
        was_training = policy.training
        policy.eval()
        out = policy.generate(
            input_ids=prompts, attention_mask=attention, **batch_mm,
            do_sample=True, temperature=self.settings.temperature, top_k=0, top_p=1.0,
            max_new_tokens=self.settings.max_new_tokens, num_return_sequences=G, use_cache=True,
            eos_token_id=self.eot_id, pad_token_id=self.policy_tokenizer.pad_token_id,
            suppress_tokens=self.suppress_ids or None,
        )
        policy.train(was_training)
        results = []
        for k in range(len(items)):
            completions = out[k * G : (k + 1) * G, width:]
            mask = completion_mask(completions, self.eot_id)
            length = max(int(mask.sum(-1).max()), 1)  # drop columns past every rollout's end
            results.append((completions[:, :length], mask[:, :length], _repeat_mm(per_item[k], G)))
        return results

    @staticmethod
    def _mm_inputs(policy: Any, item: AlignItem, device: torch.device) -> dict[str, torch.Tensor]:
        """One prompt's multimodal inputs on ``device``, with Qwen-VL's token types for its own prompt ids."""
        mm = {k: v.to(device) for k, v in item.mm_inputs.items() if k != "mm_token_type_ids"}
        if "pixel_values" in mm and hasattr(policy.config, "image_token_id"):
            ids = torch.tensor([item.prompt_ids], device=device)
            mm["mm_token_type_ids"] = (ids == policy.config.image_token_id).long()
        return mm

    def _disc_segments(self, completion: torch.Tensor, split: Any, row: int, text: str) -> dict[str, list[int]]:
        """A valid rollout's segment ids for the discriminator: the policy's own ids when vocabularies match."""
        if self.same_vocab:
            ids = completion[: int(split.lengths[row])].tolist()
            cut = int(split.boundary[row])
            spans = {"caption": ids[:cut], "reasoning": ids[cut:], "response": ids}
            return {name: spans[name] for name in self.segments}
        ids = self.disc_tokenizer(text, add_special_tokens=False)["input_ids"] + [end_of_turn_id(self.disc_tokenizer)]
        resplit = split_segments(ids, self.disc_tokenizer, eos_token_ids=ids[-1])
        return {name: ids[slice(*resplit.span(name))] for name in self.segments} if resplit.valid else {}

    def _generate_and_score(self, items: list[AlignItem]) -> list[RolloutGroup]:
        G = self.settings.num_generations
        device = self.accelerator.device
        rollouts, groups_valid, texts, students = [], [], [], []
        for item, (completions, mask, mm) in zip(items, self._rollouts(items), strict=True):
            split = split_segments(completions.cpu(), self.policy_tokenizer, mask.cpu(), eos_token_ids=self.eot_id)
            rollouts.append((item, completions, mask, mm))
            groups_valid.append(split.valid)
            texts += split.texts
            if self.rule_scorer is not None:
                continue
            for row in range(G):
                seg = (self._disc_segments(completions[row].cpu(), split, row, split.texts[row])
                       if split.valid[row] else {})
                students.append(seg if seg and all(len(v) for v in seg.values()) else {})
        group_index = torch.arange(len(items)).repeat_interleave(G)
        golds = [item.ground_truth for item in items]
        rewards = verifiable_rewards(texts, golds, G)  # once: the verifiable reward's scores and the metrics
        if self.rule_scorer is None:
            valid = torch.cat(groups_valid) & torch.tensor([bool(s) for s in students])
            scores = self._score(items, students, valid)
        else:
            valid = torch.cat(groups_valid)
            scores = self.rule_scorer(texts, valid, [item.extra.get("teacher_text") for item in items], golds, G,
                                      rewards)
            if self.rule_scorer.verifiable:  # the reward applies its own format gate to every rollout
                valid = torch.ones_like(valid)
        advantages = segment_advantage(
            {s: scores[s] for s in self.segments}, self.settings.segment_weights, valid, group_index,
            format_penalty=self.settings.format_penalty, scale=self.settings.scale_advantages,
        )
        finite = bool(torch.isfinite(advantages).all()) and all(
            bool(torch.isfinite(scores[f"teacher_{s}"]).all()) for s in self.segments if f"teacher_{s}" in scores
        )
        if not finite:  # a broken scorer must not steer the policy: this batch trains nothing
            self.nonfinite_skips["scores"] += 1
            logger.warning("prism_align: non-finite discriminator scores; skipping this batch's updates")
            advantages = torch.full_like(advantages, float("nan"))
        disc_metrics: dict[str, float] = {}
        gated = False
        if self.rule_scorer is None:
            accuracy = self._batch_accuracy(scores, valid, self._differs_from_teacher(items, students, valid))
            if accuracy is not None:
                disc_metrics["disc/batch_accuracy"] = accuracy
                gated = accuracy < self.settings.min_disc_accuracy
            disc_metrics["policy/gated"] = float(gated)
        self._rollout_batches += 1
        update_now = self.discriminator is not None and self.settings.update_discriminator and finite and (
            (self._rollout_batches - 1) % self.settings.disc_update_every == 0
        )
        if update_now:
            disc_metrics.update(self._update_discriminator(items, students, valid))

        groups = []
        for k, (item, completions, mask, mm) in enumerate(rollouts):
            prompt = torch.tensor(item.prompt_ids, device=device).expand(G, -1)
            if "mm_token_type_ids" in mm:  # covers the completion too in the full-sequence forward
                mm = {**mm, "mm_token_type_ids": torch.cat([mm["mm_token_type_ids"], torch.zeros_like(completions)], 1)}
            group = RolloutGroup(
                input_ids=torch.cat([prompt, completions], dim=1),
                attention_mask=torch.cat([torch.ones_like(prompt), mask], dim=1),
                completion_mask=mask,
                mm_inputs=mm,
                advantages=advantages[k * G : (k + 1) * G].to(device),
                old_log_probs=None,
                gated=gated,
            )
            if self.settings.policy_epochs > 1 and not gated:
                with torch.no_grad():
                    group.old_log_probs = self._log_probs(self.model, group)
            groups.append(group)
        self._record_step_metrics(valid, scores, advantages, rollouts, rewards, disc_metrics)
        return groups

    @torch.no_grad()
    def _score(self, items: list[AlignItem], students: list[dict], valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Current-discriminator scores (eval mode, clipped) of every valid rollout and of each teacher."""
        disc = self.discriminator
        was_training = disc.training
        disc.eval()
        G = self.settings.num_generations
        queries, where = [], []
        for i, segs in enumerate(students):
            if valid[i]:
                for name in self.segments:
                    queries.append(SegmentQuery(i // G, name, segs[name]))
                    where.append(("student", i, name))
        for k, item in enumerate(items):
            for name in self.segments:
                queries.append(SegmentQuery(k, name, item.teacher[name]))
                where.append(("teacher", k, name))
        values = score(disc, [item.disc_prompt for item in items], queries, clip=self.settings.score_clip).cpu()
        disc.train(was_training)
        out = {name: torch.full((len(students),), float("nan")) for name in self.segments}
        teacher = {name: torch.zeros(len(items)) for name in self.segments}
        for (side, idx, name), value in zip(where, values, strict=True):
            (out if side == "student" else teacher)[name][idx] = value
        out.update({f"teacher_{name}": teacher[name] for name in self.segments})
        return out

    def _batch_accuracy(self, scores: dict[str, torch.Tensor], valid: torch.Tensor,
                        differs: dict[str, torch.Tensor] | None = None) -> float | None:
        """Share of (valid rollout, segment) pairs where the current discriminator ranks the teacher
        above the rollout, on rollouts it has not trained on yet; over all ranks; None without any.

        ``differs[segment]`` (N,) marks rollouts whose segment is not the teacher's token for token:
        a rollout that repeats the teacher's segment is no comparison at all (the better the policy,
        the more of them), so it is left out. A score tie between different segments counts one half."""
        G = self.settings.num_generations
        counts = torch.zeros(2, dtype=torch.float64)
        for name in self.segments:
            keep = valid if differs is None else valid & differs[name]
            teacher = scores[f"teacher_{name}"].repeat_interleave(G)[keep]
            student = scores[name][keep]
            counts[0] += float(pairwise_wins(teacher, student).sum())
            counts[1] += int(keep.sum())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = counts.to(self.accelerator.device)
            torch.distributed.all_reduce(counts)
        return float(counts[0] / counts[1]) if counts[1] > 0 else None

    def _differs_from_teacher(self, items: list[AlignItem], students: list[dict],
                              valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per segment, (N,) bool: the valid rollout's segment ids differ from its prompt's teacher's."""
        G = self.settings.num_generations
        def differs(i: int, name: str) -> bool:
            return bool(valid[i]) and _ids_list(students[i][name]) != _ids_list(items[i // G].teacher[name])

        return {name: torch.tensor([differs(i, name) for i in range(len(students))], dtype=torch.bool)
                for name in self.segments}

    def _update_discriminator(self, items: list[AlignItem], students: list[dict], valid: torch.Tensor) -> dict:
        """One optimiser step on teacher ≻ rollout over the valid rollouts; skipped when no rank has one."""
        n_local = int(valid.sum())
        n_total = n_local
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            count = torch.tensor([n_local], device=self.accelerator.device)
            torch.distributed.all_reduce(count)
            n_total = int(count.item())
        if n_total == 0:
            return {"disc/skipped": 1.0}
        disc = self.discriminator
        disc.train()
        self.disc_optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {"disc/skipped": 0.0}
        if n_local:
            loss, bt_metrics, aux = self._disc_loss(items, students, valid)
            if aux is not None:
                loss = loss + self.settings.router_aux_coef * aux
                metrics["disc/router_aux_loss"] = float(aux.detach())
            if not torch.isfinite(loss):  # keep the collectives below in step; the gradient is dropped
                self.nonfinite_skips["disc_loss"] += 1
                logger.warning("prism_align: non-finite discriminator loss; skipping its update")
                loss = loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
                metrics["disc/skipped"] = 1.0
            (loss * n_local / n_total * (torch.distributed.get_world_size() if distributed else 1)).backward()
            metrics.update({f"disc/{k}": v for k, v in bt_metrics.items() if k != "num_pairs"})
        if distributed:  # every rank joins the same collectives, also with no valid rollout of its own
            world = torch.distributed.get_world_size()
            for param in disc.parameters():
                if param.requires_grad:
                    if param.grad is None:
                        param.grad = torch.zeros_like(param)
                    torch.distributed.all_reduce(param.grad)
                    param.grad /= world
        grad_norm = torch.nn.utils.clip_grad_norm_(disc.parameters(), self.settings.disc_max_grad_norm)
        if metrics["disc/skipped"] == 0.0 and torch.isfinite(grad_norm):
            self.disc_optimizer.step()
        else:
            metrics["disc/skipped"] = 1.0
        self.disc_optimizer.zero_grad(set_to_none=True)
        metrics["disc/grad_norm"] = float(grad_norm)
        return metrics

    def _disc_loss(self, items: list[AlignItem], students: list[dict], valid: torch.Tensor):
        """Bradley–Terry + score regulariser over the valid rollouts, in train mode with gradients.

        Scores each group's teacher segments once and every valid rollout's segments, through the
        shared-prefix path of :func:`score_with_aux`: each prompt (and image) is encoded once per group
        (per routing in ``dedicated`` mode) and every segment runs as a continuation of its cache,
        which gives the scores and gradients of full (prompt ⊕ segment) forwards at a fraction of the
        cost. Teacher scores are then indexed per rollout (autograd sums the reuse), which gives the
        loss of scoring a (teacher, rollout) pair per rollout. Returns (loss, metrics, router aux loss).
        """
        G = self.settings.num_generations
        disc = self.discriminator
        rollouts = [i for i in range(len(students)) if valid[i]]
        groups = sorted({i // G for i in rollouts})
        slot_of = {g: k for k, g in enumerate(groups)}
        queries = [SegmentQuery(k, s, items[g].teacher[s]) for k, g in enumerate(groups) for s in self.segments]
        queries += [SegmentQuery(slot_of[i // G], s, students[i][s]) for i in rollouts for s in self.segments]
        prompts = [items[g].disc_prompt for g in groups]
        scores, aux = score_with_aux(disc, prompts, queries, reuse_prefix=self.disc_reuse_prefix,
                                     batch_size=len(queries))
        S = len(self.segments)
        teacher_scores = scores[: len(groups) * S].view(len(groups), S)
        student_scores = scores[len(groups) * S :].view(len(rollouts), S)
        slot = torch.tensor([slot_of[i // G] for i in rollouts], device=scores.device)
        teacher = {s: teacher_scores[slot, j] for j, s in enumerate(self.segments)}
        student = {s: student_scores[:, j] for j, s in enumerate(self.segments)}
        ones = torch.ones(len(rollouts), dtype=torch.bool, device=scores.device)
        loss, metrics = discriminator_loss(teacher, student, ones, self.settings.score_reg_coef)
        return loss, metrics, aux

    # ------------------------------------------------------------------ policy loss

    def _log_probs(self, model: torch.nn.Module, group: RolloutGroup) -> torch.Tensor:
        """Per-token log-probabilities (G, T) of the completions under ``model`` (sampling temperature applied)."""
        T = group.completion_mask.shape[1]
        out = model(input_ids=group.input_ids, attention_mask=group.attention_mask, logits_to_keep=T + 1,
                    use_cache=False, **group.mm_inputs)
        logits = out.logits[:, :-1, :].float() / self.settings.temperature
        targets = group.input_ids[:, -T:]
        return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def compute_loss(self, model, inputs: list[RolloutGroup], return_outputs=False, num_items_in_batch=None):
        """Token-mean of the registered policy loss over every rollout token of the micro-batch."""
        if any(group.gated for group in inputs):  # no parameter gets a gradient: the optimiser skips them all
            self.record_metrics("train", {"policy/gated": 1.0})
            loss = torch.zeros((), device=self.accelerator.device, requires_grad=True)
            return (loss, None) if return_outputs else loss
        total_tokens = sum(float(g.completion_mask.sum()) for g in inputs)
        loss = torch.zeros((), device=self.accelerator.device)
        metrics: dict[str, float] = {}
        clip_high = self.settings.clip_high if self.settings.clip_high is not None else self.settings.clip_low
        for group in inputs:
            log_probs = self._log_probs(model, group)
            old = group.old_log_probs if group.old_log_probs is not None else log_probs.detach()
            group_loss, group_metrics = self.policy_loss_fn(
                log_probs, old, group.advantages, group.completion_mask,
                clip_low=self.settings.clip_low, clip_high=clip_high, agg_mode="token-mean",
            )
            share = float(group.completion_mask.sum()) / max(total_tokens, 1.0)
            loss = loss + group_loss * share
            for key, value in group_metrics.items():
                metrics[f"policy/{key}"] = metrics.get(f"policy/{key}", 0.0) + value * share
        if not torch.isfinite(loss):  # no parameter gets a gradient, so the optimiser leaves them as they are
            self.nonfinite_skips["policy_loss"] += 1
            logger.warning("prism_align: non-finite policy loss (or scores); skipping this policy update")
            loss = torch.zeros((), device=self.accelerator.device, requires_grad=True)
            metrics = {"policy/skipped": 1.0}
        else:
            metrics["policy/loss"] = float(loss.detach())
            metrics["policy/skipped"] = 0.0
        metrics.update({f"nonfinite_skips/{k}": float(v) for k, v in self.nonfinite_skips.items()})
        self.record_metrics("train", metrics)
        return (loss, None) if return_outputs else loss

    # ------------------------------------------------------------------ metrics and saving

    def _record_step_metrics(self, valid, scores, advantages, rollouts, rewards, disc_metrics) -> None:
        G = self.settings.num_generations
        lengths = torch.cat([mask.sum(-1).cpu() for _, _, mask, _ in rollouts]).float()
        metrics = {"valid_ratio": float(valid.float().mean()), "response_length": float(lengths.mean()),
                   "advantage_mean": float(advantages.mean()), "advantage_std": float(advantages.std())}
        for name in self.segments:
            student = scores[name][valid]
            if len(student):
                metrics[f"{name}/student_score"] = float(student.mean())
            if f"teacher_{name}" not in scores:  # a rule scorer scores the rollouts only
                continue
            teacher = scores[f"teacher_{name}"]
            metrics[f"{name}/teacher_score"] = float(teacher.mean())
            if len(student):
                teacher_per_rollout = teacher.repeat_interleave(G)[valid]
                metrics[f"{name}/score_gap"] = float((teacher_per_rollout - student).mean())
        if rewards is not None:
            metrics["reward"] = float(rewards["overall"].mean())
            metrics["accuracy_reward"] = float(rewards["accuracy"].mean())
        metrics.update(disc_metrics)
        self.record_metrics("train", metrics)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (Trainer) and the discriminator with its processor and optimiser state under
        ``output_dir/discriminator`` — in checkpoints too, so ``resume_from_checkpoint`` restores both."""
        super().save_model(output_dir, _internal_call)
        if self.discriminator is not None and self.is_world_process_zero():
            import os

            target = os.path.join(output_dir or self.args.output_dir, DISCRIMINATOR_DIR)
            self.discriminator.save_pretrained(target)
            processor = getattr(self, "disc_processor", None)
            if processor is not None:
                processor.save_pretrained(target)
            if self.disc_optimizer is not None:
                torch.save(
                    {"optimizer": self.disc_optimizer.state_dict(), "rollout_batches": self._rollout_batches,
                     "nonfinite_skips": self.nonfinite_skips},
                    os.path.join(target, DISC_STATE_FILE),
                )

    def load_discriminator_state(self, checkpoint_dir: str) -> bool:
        """Restore the discriminator optimiser and counters saved by :meth:`save_model`; False if absent."""
        import os

        path = os.path.join(checkpoint_dir, DISCRIMINATOR_DIR, DISC_STATE_FILE)
        if self.disc_optimizer is None or not os.path.isfile(path):
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.disc_optimizer.load_state_dict(state["optimizer"])
        self._rollout_batches = state["rollout_batches"]
        self.nonfinite_skips.update(state["nonfinite_skips"])
        return True


def _repeat_mm(mm: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    """Multimodal inputs of one prompt repeated for ``times`` rollouts (Qwen-VL pixel rows are flattened patches)."""
    out = {}
    for key, value in mm.items():
        out[key] = value.repeat(times, *([1] * (value.dim() - 1)))
    return out
