"""``PrismAlignTrainer``: the PRISM alignment step (Wang et al. 2026, §3) on a transformers ``Trainer``.

One optimiser step: for each micro-batch of prompts of the accumulation window,
rollout → split → score → advantage → discriminator update; then the policy update over the window,
with the registered policy loss normalised by the window's global token (or sequence) count.
The rollout engine (:mod:`prism_plugin.rollout`), the scorer (:mod:`prism_plugin.scorers`: the
discriminator, the verifiable reward or a scorer file) and the policy loss
(:mod:`prism_plugin.losses`) are pluggable; the policy's optimiser, scheduler, accumulation,
DeepSpeed, logging and checkpoints are the Trainer's.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields
from typing import Any

import torch
from transformers import Trainer
from transformers.utils import logging

from prism_plugin.advantage import dynamic_sampling_mask, segment_advantage
from prism_plugin.arguments import DriftMonitorArguments, PrismArguments, PrismDataArguments
from prism_plugin.compat import TOKEN_TYPES_KWARG, rope_index_takes_token_types, token_types
from prism_plugin.discriminator.loss import pairwise_wins
from prism_plugin.distributed import all_gather, all_ranks_sum, any_rank, is_distributed, rank
from prism_plugin.faults import kill_point
from prism_plugin.llamafactory.checkpoints import AtomicCheckpointMixin
from prism_plugin.llamafactory.metrics import MetricsLogMixin
from prism_plugin.logprobs import completion_log_probs
from prism_plugin.losses import aggregation_unit, get_policy_loss, policy_loss_defaults
from prism_plugin.portable import make_portable
from prism_plugin.rng import SamplingStream
from prism_plugin.rollout import RolloutEngine, Rollouts, Sampling, repeat_rows
from prism_plugin.scorers import AlignPrompt, RolloutBatch, Scorer, Scores
from prism_plugin.segment_split import split_segments

DISCRIMINATOR_DIR = "discriminator"
RESUME_STATE_FILE = "prism_align_state_{rank}.pt"  # one per rank, in every checkpoint
logger = logging.get_logger(__name__)


@dataclass
class RolloutGroup:
    """The rollouts of one prompt, ready for the policy loss."""

    prompt_ids: torch.Tensor  # (P,)
    completions: torch.Tensor  # (G, T)
    completion_mask: torch.Tensor  # (G, T): response tokens up to the first end-of-turn
    mm_inputs: dict[str, torch.Tensor]  # the prompt's pixel_values / image_grid_thw, repeated for the G rows
    advantages: torch.Tensor  # (G,)
    old_log_probs: torch.Tensor | None = None  # (G, T), None when the policy takes one step per batch


@dataclass
class PackedRows:
    """The rows of several groups in one right-padded batch (prompt ⊕ completion, then padding)."""

    input_ids: torch.Tensor  # (N, max P + max T)
    attention_mask: torch.Tensor
    completion_starts: torch.Tensor  # (N,) the column of each row's first completion token
    width: int  # max T
    model_inputs: dict[str, torch.Tensor]


def pack_groups(groups: list[RolloutGroup], pad_id: int, policy: torch.nn.Module) -> PackedRows:
    """One forward's inputs for ``groups``: each row its prompt then its completion, right-padded to a common
    width (causal attention leaves every real token as in its own group's forward), with the image inputs
    concatenated in row order and M-RoPE token types where the policy takes them."""
    width = max(g.completions.shape[1] for g in groups)
    length = max(g.prompt_ids.shape[0] for g in groups) + width
    rows = sum(g.completions.shape[0] for g in groups)
    device = groups[0].completions.device
    ids = torch.full((rows, length), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros_like(ids)
    starts = torch.zeros(rows, dtype=torch.long, device=device)
    row = 0
    for g in groups:
        size, prompt, t = g.completions.shape[0], g.prompt_ids.shape[0], g.completions.shape[1]
        ids[row:row + size, :prompt] = g.prompt_ids
        ids[row:row + size, prompt:prompt + t] = g.completions
        attention[row:row + size, :prompt] = 1
        attention[row:row + size, prompt:prompt + t] = g.completion_mask
        starts[row:row + size] = prompt
        row += size
    mm = {key: torch.cat([g.mm_inputs[key] for g in groups if key in g.mm_inputs])
          for key in ("pixel_values", "image_grid_thw") if any(key in g.mm_inputs for g in groups)}
    if "pixel_values" in mm and rope_index_takes_token_types(policy):  # M-RoPE over prompt and completion
        mm[TOKEN_TYPES_KWARG] = token_types(ids, policy.config).long()
    return PackedRows(ids, attention, starts, width, mm)


class PolicyMicroBatch(list):
    """The rollout groups of one micro-batch, with how their loss enters the optimiser step: ``trains``
    (False for a gated or non-finite batch: it joins the backward with a zero loss), and ``scale``
    (world size × micro-batches in the window / the window's global token or sequence count)."""

    trains: bool = True
    scale: float = 0.0
    last: bool = False


class PrismAlignTrainer(AtomicCheckpointMixin, MetricsLogMixin, Trainer):
    """Policy trainer of the alignment stage; see the module docstring."""

    def __init__(self, *args: Any, prism_args: PrismArguments, scorer: Scorer, engine: RolloutEngine,
                 **kwargs: Any) -> None:
        """``prism_args`` holds the run's ``prism_*`` keys."""
        super().__init__(*args, **kwargs)
        self.prism = prism_args
        self.scorer = scorer
        self.engine = engine
        self.weights = prism_args.segment_weights
        self.sampling = Sampling(prism_args.prism_max_new_tokens, prism_args.prism_temperature)
        self.policy_loss_fn = get_policy_loss(prism_args.prism_policy_loss)
        self.loss_options = policy_loss_options(prism_args)
        self.count_unit = aggregation_unit(self.loss_options["agg_mode"])
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.policy_tokenizer = tokenizer
        self.model_accepts_loss_kwargs = False
        self.nonfinite_skips = {"scores": 0, "policy_loss": 0}
        self._window: list[PolicyMicroBatch] | None = None
        self._drop_window = False
        self._prompt_stream = PromptStream(self.train_dataset, seed=self.args.seed + self.args.process_index)
        self.engine.rng = SamplingStream(self.args.seed, self.args.process_index)
        self._resume_checkpoint: str | None = None
        self._rng_restored = False
        self._init_metrics()

    # ------------------------------------------------------------------ one optimiser step

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, None]:
        """The window's micro-batches of prompts become rollout groups, fresh every ``prism_policy_epochs``
        steps (reused, with their old log-probs, in between), normalised over the window and the ranks."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self._resume_checkpoint and not self._rng_restored:  # before this step draws anything, as uninterrupted
            self._load_rng_state(self._resume_checkpoint)
        fresh = self._window is None or self.state.global_step % self.prism.prism_policy_epochs == 0
        if fresh and batches:
            self._window = self._normalise([self.rollout_step(items) for items in batches])
        self._drop_window = False
        return list(self._window or []), None

    def rollout_step(self, prompts: list[AlignPrompt]) -> PolicyMicroBatch:
        """Rollout → split → score → advantage → discriminator update, for one micro-batch of prompts."""
        self.engine.load_policy(self.accelerator.unwrap_model(self.model), version=self.state.global_step)
        batch, signal, sampling_metrics = self.sample(prompts)
        scores = self.scorer.score(batch)
        advantages = self._advantages(batch, scores)
        finite = self._all_ranks_finite(scores, advantages)
        accuracy = batch_accuracy(scores, batch.group_index, self.accelerator.device)
        gated = accuracy is not None and accuracy < self.prism.prism_min_disc_accuracy
        metrics = self.scorer.update(batch, scores, enabled=finite)
        if accuracy is not None:
            metrics.update({"disc/batch_accuracy": accuracy, "policy/gated": float(gated)})
        self.record_metrics("train", {**step_metrics(batch, scores, advantages), **metrics, **sampling_metrics})
        return self._policy_groups(batch, advantages, trains=finite and not gated and signal)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """With ``prism_groups_across_ranks`` every prompt comes G times in a row, so the Trainer's split of each
        global batch across ranks spreads a prompt's rollouts over consecutive ranks (trl's scheme)."""
        if not self.prism.prism_groups_across_ranks:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return GroupRepeatSampler(len(dataset), self.prism.prism_num_generations, self.args.seed)

    # ------------------------------------------------------------------ resume

    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's ``train``; a resumed run first restores what :meth:`save_resume_state` saved."""
        if isinstance(resume_from_checkpoint, str | os.PathLike):
            self._resume_checkpoint = str(resume_from_checkpoint)
            self.load_resume_state(self._resume_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """Once per resume. The Trainer restores the global generators only after it has fetched the first
        resumed step's batches — after this trainer's rollouts ran — so :meth:`get_batch_samples` does it
        first, and the Trainer's later call is a no-op."""
        if self._rng_restored:
            return
        super()._load_rng_state(checkpoint)
        self._rng_restored = True

    def save_resume_state(self, directory: str) -> None:
        """This rank's part of what decides the next steps: its sampling stream, the DAPO refill stream, the
        rollout window reused across ``prism_policy_epochs`` (with its old log-probs), the metrics not yet
        logged, the skip counters; and the settings that must not change on resume."""
        state = {"world_size": self.args.world_size, "settings": resume_settings(self.prism, self.args),
                 "sampling": self.engine.rng.state_dict() if self.engine.rng else None,
                 "prompt_stream": self._prompt_stream.state_dict(),
                 "window": [window_state(micro) for micro in self._window] if self._window is not None else None,
                 "metrics": {mode: dict(values) for mode, values in self._metrics.items()},
                 "nonfinite_skips": dict(self.nonfinite_skips)}
        torch.save(state, os.path.join(directory, RESUME_STATE_FILE.format(rank=self.args.process_index)))

    def load_resume_state(self, checkpoint: str) -> None:
        """Restore :meth:`save_resume_state`'s file of this rank; a ConfigError when the run's world size or
        step-deciding settings differ from the checkpoint's. A checkpoint without one (an older version's)
        resumes as before, with a warning that the resumed run is not the same run."""
        path = os.path.join(checkpoint, RESUME_STATE_FILE.format(rank=self.args.process_index))
        if not os.path.isfile(path):
            logger.warning(f"prism_align: {checkpoint} holds no {os.path.basename(path)} (an older version saved "
                           "it): the resumed run samples anew and may differ from an uninterrupted one")
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        check_resume_settings(checkpoint, state, resume_settings(self.prism, self.args), self.args.world_size)
        if state["sampling"] is not None and self.engine.rng is not None:
            self.engine.rng.load_state_dict(state["sampling"])
        self._prompt_stream.load_state_dict(state["prompt_stream"])
        device = self.accelerator.device
        self._window = ([micro_from_state(micro, device) for micro in state["window"]]
                        if state["window"] is not None else None)
        for mode, values in state["metrics"].items():
            self._metrics[mode].update({key: list(v) for key, v in values.items()})
        self.nonfinite_skips.update(state["nonfinite_skips"])

    def sample(self, prompts: list[AlignPrompt]) -> tuple[RolloutBatch, bool, dict[str, float]]:
        """Rollouts of ``prompts``, split into segments; with ``prism_dynamic_sampling`` (DAPO), prompt groups
        whose rewards do not vary are dropped and refilled from further prompts, for at most
        ``prism_max_sampling_rounds`` rounds. Returns the batch, whether it carries any signal (False: every
        group was dropped; the batch is kept only so this rank joins the update with a zero loss), and the
        sampling metrics. No collective runs here, so ranks may take different numbers of rounds."""
        if self.prism.prism_groups_across_ranks:  # one rollout per item: a group's copies are spread over ranks
            unique = list({id(p): p for p in prompts}.values())
            rollouts = self.engine.generate([p.policy for p in prompts], 1, self.sampling)
            rollouts.prompt_index = torch.tensor([unique.index(p) for p in prompts], dtype=torch.long)
            return self._split(unique, rollouts), True, {}
        batch = self._rollouts(prompts)
        if not self.prism.prism_dynamic_sampling:
            return batch, True, {}
        kept, rounds, dropped = self._varying(batch), 0, 0
        dropped += len(prompts) - len(kept)
        while len(kept) < len(prompts) and rounds < self.prism.prism_max_sampling_rounds:
            extra = self._rollouts(self._prompt_stream.take(len(prompts) - len(kept)))
            varying = self._varying(extra)
            kept += varying
            dropped += len(extra.prompts) - len(varying)
            rounds += 1
        metrics = {"dapo/dropped_groups": float(dropped), "dapo/sampling_rounds": float(rounds),
                   "dapo/kept_groups": float(len(kept))}
        if not kept:
            return batch, False, metrics
        return self._merge(kept), True, metrics

    def _rollouts(self, prompts: list[AlignPrompt]) -> RolloutBatch:
        rollouts = self.engine.generate([p.policy for p in prompts], self.prism.prism_num_generations, self.sampling)
        return self._split(prompts, rollouts)

    def _split(self, prompts: list[AlignPrompt], rollouts: Rollouts) -> RolloutBatch:
        """``rollouts`` of ``prompts`` with their caption / reasoning split, found on the policy's own ids."""
        split = split_segments(rollouts.completions, self.policy_tokenizer, rollouts.mask,
                               eos_token_ids=self.engine.eot_id)
        return RolloutBatch(prompts, rollouts, split)

    def _varying(self, batch: RolloutBatch) -> list[tuple[RolloutBatch, int]]:
        """(batch, prompt) of every group whose scored reward varies (the groups with a signal)."""
        reward = self.scorer.score(batch).rollout["response"]
        keep = dynamic_sampling_mask(reward, batch.group_index)
        return [(batch, k) for k in range(len(batch.prompts)) if bool(keep[batch.rollouts.rows_of(k)].all())]

    def _merge(self, groups: list[tuple[RolloutBatch, int]]) -> RolloutBatch:
        """One batch of the given prompt groups of several batches (re-split: cheap, and exactly the same); the
        verifiable rewards ``_varying`` computed for those rows carry over instead of being computed again."""
        sequences, rows, prompts, source_rows = [], [], [], []
        for batch, k in groups:
            source_rows.append(batch.rollouts.rows_of(k))
            for row in source_rows[-1].tolist():
                sequences.append(batch.rollouts.completions[row, : int(batch.rollouts.lengths[row])].tolist())
                rows.append(len(prompts))
            prompts.append(batch.prompts[k])
        merged = self._split(prompts, Rollouts.from_sequences(sequences, rows, self.engine.eot_id, self.engine.pad_id))
        if all(batch.rewards is not None for batch, _ in groups):
            merged.rewards = {key: torch.cat([batch.rewards[key][at] for (batch, _), at in zip(groups, source_rows,
                                                                                              strict=True)])
                              for key in ("overall", "accuracy")}
        return merged

    # ------------------------------------------------------------------ step helpers

    def _advantages(self, batch: RolloutBatch, scores: Scores) -> torch.Tensor:
        """Group advantages of this rank's rollouts; with ``prism_groups_across_ranks`` a group's scores are
        gathered from every rank first, so the normalisation sees the whole group."""
        options = {"format_penalty": self.prism.prism_format_penalty, "scale": self.prism.prism_scale_advantages}
        if not self.prism.prism_groups_across_ranks or not is_distributed():
            return segment_advantage({s: scores.rollout[s] for s in self.weights}, self.weights, scores.valid,
                                     batch.group_index, **options)
        keys = [(p.source, p.row) for p in batch.prompts]
        local = ([keys[int(k)] for k in batch.group_index], {s: scores.rollout[s].tolist() for s in self.weights},
                 scores.valid.tolist())
        gathered = all_gather(local)
        group_of: dict[Any, int] = {}
        groups = [group_of.setdefault(key, len(group_of)) for part in gathered for key in part[0]]
        everything = segment_advantage(
            {s: torch.tensor([v for part in gathered for v in part[1][s]]) for s in self.weights}, self.weights,
            torch.tensor([v for part in gathered for v in part[2]]), groups, **options)
        start = sum(len(part[0]) for part in gathered[: rank()])
        return everything[start : start + len(local[0])]

    def _all_ranks_finite(self, scores: Scores, advantages: torch.Tensor) -> bool:
        """Whether every rank's scores and advantages are finite; a broken scorer must not steer the policy."""
        local_broken = not (scores.finite() and bool(torch.isfinite(advantages).all()))
        broken = any_rank(local_broken, self.accelerator.device)
        if broken:
            self.nonfinite_skips["scores"] += 1
            logger.warning("prism_align: non-finite scores on some rank; this batch trains nothing")
        return not broken

    def _policy_groups(self, batch: RolloutBatch, advantages: torch.Tensor, trains: bool) -> PolicyMicroBatch:
        """Prompt ⊕ completions per group, for the policy loss (old log-probs when they will be reused)."""
        device = self.accelerator.device
        micro = PolicyMicroBatch()
        micro.trains = trains
        for k, prompt in enumerate(batch.prompts):
            rows = batch.rollouts.rows_of(k)
            mask = batch.rollouts.mask[rows]
            width = max(int(mask.sum(-1).max()), 1)  # drop columns past every rollout's end
            mm = {key: value.to(device) for key, value in repeat_rows(prompt.policy.mm_inputs, len(rows)).items()}
            completions = batch.rollouts.completions[rows, :width].to(device)
            micro.append(RolloutGroup(
                torch.tensor(prompt.policy.input_ids, device=device), completions, mask[:, :width].to(device), mm,
                advantages[rows].to(device) if trains else torch.zeros(len(rows), device=device)))
        if self.prism.prism_policy_epochs > 1 and trains:
            with torch.no_grad():
                for group, old in zip(micro, self._log_probs(self.model, micro), strict=True):
                    group.old_log_probs = old
        return micro

    def _count(self, group: RolloutGroup) -> float:
        """What the loss averages over in ``group``: completion tokens, or sequences."""
        if self.count_unit == "tokens":
            return float(group.completion_mask.sum())
        return float(group.completion_mask.shape[0])

    def _normalise(self, window: list[PolicyMicroBatch]) -> list[PolicyMicroBatch]:
        """Give every micro-batch the scale that makes the window's loss the mean over the global count."""
        local = sum(self._count(g) for micro in window if micro.trains for g in micro)
        (total,) = all_ranks_sum([local], self.accelerator.device)
        world = self.accelerator.num_processes
        for micro in window:
            micro.scale = world * len(window) / total if total else 0.0
            micro.last = False
        window[-1].last = True
        return window

    # ------------------------------------------------------------------ policy loss

    def _log_probs(self, model: torch.nn.Module, groups: list[RolloutGroup]) -> list[torch.Tensor]:
        """Per-token log-probabilities (G, T) of each group's completions under ``model`` (sampling temperature
        applied), from one forward over the groups' rows; the output layer runs ``prism_logprob_chunk_size``
        positions at a time."""
        policy = self.accelerator.unwrap_model(model)
        packed = pack_groups(groups, self.engine.pad_id, policy)
        log_probs = completion_log_probs(model, policy.get_output_embeddings(), packed.input_ids,
                                         packed.attention_mask, packed.completion_starts, packed.width,
                                         self.prism.prism_temperature, self.prism.prism_logprob_chunk_size,
                                         **packed.model_inputs)
        sizes = [g.completions.shape[0] for g in groups]
        return [part[:, : g.completions.shape[1]] for part, g in zip(log_probs.split(sizes), groups, strict=True)]

    def compute_loss(self, model, inputs: PolicyMicroBatch, return_outputs=False, num_items_in_batch=None):
        """Σ over the micro-batch's groups of (the registered loss's mean × its count), × the window's scale:
        summed over micro-batches and averaged over ranks, the mean over the global count."""
        loss = torch.zeros((), device=self.accelerator.device)
        metrics: dict[str, float] = {}
        local = sum(self._count(g) for g in inputs)
        for group, log_probs in zip(inputs, self._log_probs(model, list(inputs)), strict=True):
            old = group.old_log_probs if group.old_log_probs is not None else log_probs.detach()
            group_loss, group_metrics = self.policy_loss_fn(log_probs, old, group.advantages, group.completion_mask,
                                                            **self.loss_options)
            count = self._count(group)
            loss = loss + group_loss * count
            for key, value in group_metrics.items():
                metrics[f"policy/{key}"] = metrics.get(f"policy/{key}", 0.0) + value * count / max(local, 1.0)
        loss = loss * inputs.scale
        broken = any_rank(not bool(torch.isfinite(loss.detach())), self.accelerator.device)
        if broken:  # every rank: a zero loss through the same forward, and the window's gradients dropped
            self.nonfinite_skips["policy_loss"] += 1
            logger.warning("prism_align: non-finite policy loss on some rank; skipping this update")
            self._drop_window = True
            loss = loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
        if not inputs.trains:
            loss = loss * 0.0
        trained = inputs.trains and not broken
        metrics = ({**metrics, "policy/loss": float(loss.detach()) / max(inputs.scale, 1e-30) / max(local, 1.0)}
                   if trained else {})
        metrics["policy/skipped"] = float(not trained)
        metrics.update({f"nonfinite_skips/{k}": float(v) for k, v in self.nonfinite_skips.items()})
        self.record_metrics("train", metrics)
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs: PolicyMicroBatch, num_items_in_batch=None) -> torch.Tensor:
        """The Trainer's step; after the window's last backward, a window that trains nothing (every batch
        gated or skipped, or a non-finite loss) drops its gradients so the optimiser leaves the policy as is."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if inputs.last and (self._drop_window or not any(micro.trains for micro in self._window or [])):
            model.zero_grad(set_to_none=True)
        return loss

    def _prepare_inputs(self, inputs: PolicyMicroBatch) -> PolicyMicroBatch:
        return inputs  # already on the device

    # ------------------------------------------------------------------ saving

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (Trainer) and the scorer's state (the discriminator with its optimiser state, under
        ``output_dir/discriminator``) — in checkpoints too, so ``resume_from_checkpoint`` restores both. Both
        folders are made readable by transformers 4.57 (EasyR1, Stage 3) too (:func:`make_portable`)."""
        super().save_model(output_dir, _internal_call)
        self.scorer.save(os.path.join(output_dir or self.args.output_dir, DISCRIMINATOR_DIR),
                         main=self.is_world_process_zero())
        kill_point("save:discriminator", self.state.global_step)
        if self.is_world_process_zero():
            make_portable(output_dir or self.args.output_dir)


# ---------------------------------------------------------------------- pure helpers


class GroupRepeatSampler(torch.utils.data.Sampler):
    """Every prompt ``repeats`` times in a row, prompts in a seeded random order that changes each epoch
    (the Trainer sets the epoch, also when a resumed run starts in a later one)."""

    def __init__(self, size: int, repeats: int, seed: int) -> None:
        self.size, self.repeats, self.seed, self.epoch = size, repeats, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        return iter([index for index in order for _ in range(self.repeats)])

    def __len__(self) -> int:
        return self.size * self.repeats


class PromptStream:
    """Further prompts for DAPO's refills: the training prompts in a seeded random order, over and over
    (each rank its own order), apart from the Trainer's own data loader."""

    def __init__(self, prompts: Any, seed: int) -> None:
        self.prompts = prompts
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def take(self, count: int) -> list[Any]:
        out = []
        while len(out) < count:
            if not self.order:
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
            out.append(self.prompts[self.order.pop()])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])


# A resumed run shares every ``prism_*`` setting with its checkpoint (they decide what the next step samples
# and trains on), except these: data checks, the drift monitor, and where the starting discriminator lay
# (a resumed run takes the checkpoint's).
RESUME_FREE_KEYS = frozenset({f.name for group in (PrismDataArguments, DriftMonitorArguments) for f in fields(group)}
                             | {"prism_discriminator"})


def resume_settings(prism_args: PrismArguments, training_args: Any) -> dict[str, Any]:
    """The step-deciding settings of a run: its ``prism_*`` keys (less :data:`RESUME_FREE_KEYS`) and batch."""
    settings = {key: value for key, value in vars(prism_args).items()
                if key.startswith("prism_") and key not in RESUME_FREE_KEYS}
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "seed"):
        settings[key] = getattr(training_args, key)
    return {key: value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
            for key, value in sorted(settings.items())}


def check_resume_settings(checkpoint: str, state: dict[str, Any], settings: dict[str, Any], world_size: int) -> None:
    """A ConfigError naming what differs between a checkpoint's run and the resuming one."""
    from prism_plugin.errors import ConfigError

    changes = [f"{key}: {state['settings'].get(key)!r} -> {value!r}" for key, value in settings.items()
               if state["settings"].get(key) != value]
    if state["world_size"] != world_size:
        changes.insert(0, f"ranks: {state['world_size']} -> {world_size}")
    if changes:
        raise ConfigError(
            f"cannot resume {checkpoint} exactly: {'; '.join(changes)}. Resume with the checkpoint's settings, or "
            f"start a new run from its weights (model_name_or_path: {checkpoint}, prism_discriminator: "
            f"{os.path.join(checkpoint, DISCRIMINATOR_DIR)})")


def window_state(micro: PolicyMicroBatch) -> dict[str, Any]:
    """A micro-batch of the rollout window as CPU tensors and flags (for a checkpoint)."""
    def cpu(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: item.cpu() for key, item in value.items()}
        return value.cpu() if isinstance(value, torch.Tensor) else value

    groups = [{f.name: cpu(getattr(group, f.name)) for f in fields(RolloutGroup)} for group in micro]
    return {"groups": groups, "trains": micro.trains, "scale": micro.scale, "last": micro.last}


def micro_from_state(state: dict[str, Any], device: Any) -> PolicyMicroBatch:
    """The micro-batch :func:`window_state` saved, on ``device``."""
    def moved(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: item.to(device) for key, item in value.items()}
        return value.to(device) if isinstance(value, torch.Tensor) else value

    micro = PolicyMicroBatch(RolloutGroup(**{key: moved(value) for key, value in group.items()})
                             for group in state["groups"])
    micro.trains, micro.scale, micro.last = state["trains"], state["scale"], state["last"]
    return micro


def policy_loss_options(prism_args: PrismArguments) -> dict[str, Any]:
    """Keyword options of the policy loss: the loss's own defaults, overridden only by the keys a user set;
    ``horizon`` (the generation budget) for the Dr. GRPO aggregation."""
    options = policy_loss_defaults(prism_args.prism_policy_loss)
    overrides = {"clip_low": prism_args.prism_clip_low, "clip_high": prism_args.prism_clip_high,
                 "agg_mode": prism_args.prism_loss_agg_mode}
    options.update({key: value for key, value in overrides.items() if value is not None and key in options})
    if "horizon" in options:
        options["horizon"] = prism_args.prism_max_new_tokens
    options.setdefault("agg_mode", "token-mean")
    return options


def batch_accuracy(scores: Scores, group_index: torch.Tensor, device: Any = "cpu") -> float | None:
    """Share of (valid rollout, segment) pairs whose teacher the scorer ranks above the rollout, before it
    trains on them, over all ranks; None without teacher scores or comparisons.

    A rollout segment identical to its teacher's is no comparison at all (the better the policy, the
    more of them), so it is left out; a score tie between different segments counts one half."""
    if scores.teacher is None:
        return None
    counts = [0.0, 0.0]
    for name, teacher in scores.teacher.items():
        keep = scores.valid & scores.compared[name] if scores.compared is not None else scores.valid
        counts[0] += float(pairwise_wins(teacher[group_index][keep], scores.rollout[name][keep]).sum())
        counts[1] += float(keep.sum())
    wins, total = all_ranks_sum(counts, device)
    return wins / total if total else None


def step_metrics(batch: RolloutBatch, scores: Scores, advantages: torch.Tensor) -> dict[str, float]:
    """The rollout-side metrics of one batch: layout-valid share, lengths, advantages, scores and gaps."""
    lengths = batch.rollouts.lengths.float()
    metrics = {"valid_ratio": float(batch.split.valid.float().mean()), "response_length": float(lengths.mean()),
               "truncated_ratio": float(batch.split.truncated.float().mean()),
               "advantage_mean": float(advantages.mean()),
               "advantage_std": float(advantages.std()) if len(advantages) > 1 else 0.0}
    for name, values in scores.rollout.items():
        rollout = values[scores.valid]
        if len(rollout):
            metrics[f"{name}/student_score"] = float(rollout.mean())
        if scores.teacher is None:
            continue
        teacher = scores.teacher[name]
        metrics[f"{name}/teacher_score"] = float(teacher.mean())
        if len(rollout):
            metrics[f"{name}/score_gap"] = float((teacher[batch.group_index][scores.valid] - rollout).mean())
    rewards = batch.rewards
    if rewards is not None:
        metrics["reward"] = float(rewards["overall"].mean())
        metrics["accuracy_reward"] = float(rewards["accuracy"].mean())
    return metrics
