"""The discriminator as the alignment step's scorer: segment scores against the teacher, and its update.

Per batch it scores, with shared-prefix reuse, each prompt's teacher segments and every valid
rollout's segments — the policy's own token ids when both models share a vocabulary (re-tokenised
text otherwise). On a batch the discriminator trains on, that one forward runs in train mode with
gradients: the advantages read the same hidden states through the head without dropout (the head's
dropout is the model's only train/eval difference), and the update backpropagates the scores with
dropout. The update's rows follow the authors' ``update_critic``: every valid rollout against its
prompt's teacher, and — with ``prism_score_reg_rows: all`` — every invalid rollout too, split at half
its length into a "caption" and a "reasoning" part, for the score regulariser. :meth:`DiscriminatorScorer.dry_run`
computes that same loss without a gradient or a step (``align-preview``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from prism_plugin.data.records import DatasetRowError, PromptRecord
from prism_plugin.discriminator.loss import DiscriminatorLoss
from prism_plugin.discriminator.rendering import TextScorer
from prism_plugin.discriminator.segment_forward import PromptInputs, SegmentQuery, segment_states
from prism_plugin.discriminator.updater import DiscriminatorUpdater
from prism_plugin.scorers import RolloutBatch, Scores


@dataclass(frozen=True)
class DiscriminatorInputs:
    """A prompt rendered for the discriminator and its teacher's segment ids."""

    prompt: PromptInputs
    teacher: dict[str, list[int]]


@dataclass
class _Pending:
    """What the update reuses from the scoring forward: scores with gradients, and their rows."""

    scores: torch.Tensor  # (queries,) with head dropout, graph attached
    aux: torch.Tensor | None
    teacher_slot: dict[tuple[int, str], int]  # (prompt, segment) -> query index
    rows: list[tuple[int, bool, dict[str, int]]]  # per update row: rollout, valid, segment -> query index


def same_vocabulary(a: Any, b: Any) -> bool:
    """Whether two tokenizers map every token to the same id (then the policy's ids are scored as they are)."""
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


class DiscriminatorScorer:
    """Scores rollouts with a PRISM discriminator and (with an ``updater``) trains it on each batch, on ``loss``
    (whose clip also bounds the scores the advantages see)."""

    def __init__(self, text_scorer: TextScorer, segments: list[str], *, policy_tokenizer: Any, cutoff_len: int,
                 loss: DiscriminatorLoss, updater: DiscriminatorUpdater | None = None,
                 compute_dtype: torch.dtype | None = None) -> None:
        """``compute_dtype`` (bf16 / fp16 runs) is the autocast dtype of the forwards; the weights the
        optimiser updates stay as loaded (float32 master weights)."""
        self.text = text_scorer
        self.model = text_scorer.model
        self.segments = list(segments)
        self.policy_tokenizer = policy_tokenizer
        self.same_vocab = same_vocabulary(policy_tokenizer, text_scorer.tokenizer)
        # the policy's own ids are scored as they are only by a continuation discriminator of the same vocabulary
        self.policy_ids = self.same_vocab and not text_scorer.turn
        self.loss = loss
        self.cutoff_len = cutoff_len
        self.updater = updater
        self.compute_dtype = compute_dtype
        self._forward: tuple[RolloutBatch, _Pending] | None = None  # the last trained-on batch's scoring forward

    # ----------------------------------------------------------------- data load

    def prepare(self, record: PromptRecord, source: str) -> DiscriminatorInputs:
        """The rendered prompt and the teacher's segment ids; rows too long for ``cutoff_len`` are errors."""
        try:
            prompt = self.text.render_prompt(record.prompt, list(record.images) or None)
        except DatasetRowError as err:
            raise err.at(source, record.row) from err.__cause__
        try:
            teacher = self.text.segment_ids(record.teacher, self.segments)
        except ValueError as exc:
            raise DatasetRowError(source, record.row, "teacher_caption", f"teacher {exc}", "layout") from None
        for name, ids in teacher.items():
            length = len(prompt.input_ids) + len(ids)
            if length > self.cutoff_len:
                raise DatasetRowError(
                    source, record.row, "teacher_caption" if name == "caption" else "teacher_cot",
                    f"prompt + teacher {name} segment is {length} tokens, over cutoff_len {self.cutoff_len}",
                    "too_long",
                )
        return DiscriminatorInputs(prompt, teacher)

    # ----------------------------------------------------------------- segments of the rollouts

    def _ids(self, batch: RolloutBatch, row: int) -> list[int] | None:
        """A rollout's response ids in the discriminator's vocabulary (None if re-tokenising fails)."""
        if self.policy_ids:
            return batch.rollouts.completions[row, : int(batch.split.lengths[row])].tolist()
        text = batch.texts[row]
        return self.text.tokenize_response(text) if text.strip() else None

    def _valid_segments(self, batch: RolloutBatch, row: int) -> dict[str, list[int]] | None:
        """A layout-valid rollout's segment ids; None when a segment comes out empty."""
        if self.policy_ids:
            ids = self._ids(batch, row)
            cut = int(batch.split.boundary[row])
            spans = {"caption": ids[:cut], "reasoning": ids[cut:], "response": ids}
            segs = {name: spans[name] for name in self.segments}
        else:
            try:
                segs = self.text.segment_ids(batch.texts[row], self.segments)
            except ValueError:
                return None
        return segs if all(segs.values()) else None

    def _half_segments(self, batch: RolloutBatch, row: int) -> dict[str, list[int]] | None:
        """An invalid rollout as the authors score it for the regulariser: split at half its length (at least
        one token each side; a one-token rollout has no second part and stays out)."""
        ids = self._ids(batch, row)
        if self.text.turn and ids and ids[-1] == self.text.eot:
            ids = ids[:-1]
        if not ids or len(ids) < 2:
            return None
        half = max(1, len(ids) // 2)
        spans = {"caption": ids[:half], "reasoning": ids[half:], "response": ids}
        end = self.text.turn_end if self.text.turn else []  # a turn discriminator reads each part as a turn
        return {name: spans[name] + end for name in self.segments}

    # ----------------------------------------------------------------- scoring

    def score(self, batch: RolloutBatch) -> Scores:
        """Scores of the batch; on a batch the discriminator trains on, from the forward its update reuses."""
        train = self.updater is not None and self.updater.due()
        scores, pending = self._score(batch, loss_rows=train, grad=train)
        self._forward = (batch, pending) if pending is not None else None
        return scores

    def pending_update(self, batch: RolloutBatch) -> _Pending | None:
        """What the update of ``batch`` will train on — the scores (with their graph) of its scoring forward and
        their rows — or None when the batch was not scored for an update."""
        return self._forward[1] if self._forward is not None and self._forward[0] is batch else None

    def dry_run(self, batch: RolloutBatch) -> tuple[Scores, dict[str, float]]:
        """The scores of the batch and the ``disc/*`` metrics of the loss a training step would take on it — the
        same rows and settings, head dropout off, no gradient, nothing trained."""
        scores, pending = self._score(batch, loss_rows=True, grad=False)
        _, metrics = self.loss(*self._loss_inputs(batch, pending))
        return scores, metrics

    def _score(self, batch: RolloutBatch, *, loss_rows: bool, grad: bool) -> tuple[Scores, _Pending | None]:
        """Scores of every valid rollout and teacher; ``loss_rows`` keeps what the loss needs (with
        ``prism_score_reg_rows: all`` an invalid rollout's halves too), with its graph when ``grad``."""
        n = len(batch.texts)
        segs = [self._valid_segments(batch, i) if batch.split.valid[i] else None for i in range(n)]
        valid = torch.tensor([s is not None for s in segs], dtype=torch.bool)
        inputs: list[DiscriminatorInputs] = [p.scorer_inputs for p in batch.prompts]
        compared = {name: torch.tensor([s is not None and s[name] != inputs[int(batch.group_index[i])].teacher[name]
                                        for i, s in enumerate(segs)], dtype=torch.bool) for name in self.segments}
        halves = ([self._half_segments(batch, i) if segs[i] is None else None for i in range(n)]
                  if loss_rows and self.loss.reg_rows == "all" else [None] * n)

        queries: list[SegmentQuery] = []
        teacher_slot: dict[tuple[int, str], int] = {}
        for k, item in enumerate(inputs):
            for name in self.segments:
                teacher_slot[(k, name)] = len(queries)
                queries.append(SegmentQuery(k, name, item.teacher[name]))
        rows: list[tuple[int, bool, dict[str, int]]] = []
        for i in range(n):
            found = segs[i] if segs[i] is not None else halves[i]
            if found is None:
                continue
            slots = {}
            for name in self.segments:
                slots[name] = len(queries)
                queries.append(SegmentQuery(int(batch.group_index[i]), name, found[name]))
            rows.append((i, segs[i] is not None, slots))

        prompts = [item.prompt for item in inputs]
        names = [q.segment for q in queries]
        model = self.model
        pending = None
        if grad:
            model.train()
            with self._autocast():
                states, aux = segment_states(model, prompts, queries, batch_size=len(queries), with_aux=True)
                pending = _Pending(model.score_hidden(states, names), aux, teacher_slot, rows)
            with torch.no_grad():
                values = model.score_hidden(states.detach().float(), names, dropout=False)
        else:
            was_training = model.training
            model.eval()
            with torch.no_grad(), self._autocast():
                states, aux = segment_states(model, prompts, queries, batch_size=len(queries), with_aux=loss_rows)
                values = model.score_hidden(states, names)
            model.train(was_training)
            if loss_rows:
                pending = _Pending(values.float(), aux, teacher_slot, rows)
        clip = self.loss.clip
        values = values.detach().float().cpu()
        values = values if clip is None else values.clamp(-clip, clip)
        rollout = {name: torch.full((n,), float("nan")) for name in self.segments}
        for i, is_valid, slots in rows:
            if is_valid:
                for name in self.segments:
                    rollout[name][i] = values[slots[name]]
        teacher = {name: torch.stack([values[teacher_slot[(k, name)]] for k in range(len(inputs))])
                   for name in self.segments}
        return Scores(rollout, valid, teacher, compared), pending

    def _autocast(self) -> Any:
        """The forwards' autocast (a no-op without a compute dtype)."""
        device = next(self.model.parameters()).device
        return torch.autocast(device.type, dtype=self.compute_dtype or torch.float32,
                              enabled=self.compute_dtype is not None)

    # ----------------------------------------------------------------- training

    def update(self, batch: RolloutBatch, scores: Scores, enabled: bool = True) -> dict[str, float]:
        """One discriminator step on the batch when it is due (every rank joins it); otherwise nothing."""
        if self.updater is None:
            return {}
        due = self.updater.due()
        self.updater.advance()
        if not due:
            return {}
        pending = self.pending_update(batch) if enabled else None
        self._forward = None  # the graph is consumed once
        if pending is None:
            return {"disc/skipped": 1.0}
        return self.updater.update(*self._loss_inputs(batch, pending))

    def _loss_inputs(self, batch: RolloutBatch, pending: _Pending) -> tuple[dict[str, torch.Tensor],
                                                                            dict[str, torch.Tensor], torch.Tensor,
                                                                            torch.Tensor | None]:
        """(teacher, student, valid, aux) of the loss: each loss row against its prompt's teacher."""
        device = pending.scores.device
        rollouts = torch.tensor([i for i, _, _ in pending.rows], dtype=torch.long)
        teacher, student = {}, {}
        for name in self.segments:
            teacher_index = [pending.teacher_slot[(int(batch.group_index[i]), name)] for i in rollouts.tolist()]
            teacher[name] = pending.scores[torch.tensor(teacher_index, dtype=torch.long, device=device)]
            student_index = [slots[name] for _, _, slots in pending.rows]
            student[name] = pending.scores[torch.tensor(student_index, dtype=torch.long, device=device)]
        valid = torch.tensor([is_valid for _, is_valid, _ in pending.rows], dtype=torch.bool, device=device)
        if not pending.rows:  # nothing of this rank's own to score: the teacher rows alone carry the loss
            teacher = {name: pending.scores[torch.tensor([pending.teacher_slot[(k, name)]
                                                         for k in range(len(batch.prompts))], device=device)]
                       for name in self.segments}
            student = {name: torch.zeros_like(t) for name, t in teacher.items()}
            valid = torch.zeros(len(batch.prompts), dtype=torch.bool, device=device)
        return teacher, student, valid, pending.aux

    def save(self, directory: str, main: bool = True) -> None:
        if self.updater is not None:
            self.updater.save(directory, self.text.processor, main)
        elif main:
            from prism_plugin.discriminator.loading import save_discriminator

            save_discriminator(self.model, directory, self.text.processor)

    def load_state(self, directory: str) -> bool:
        return self.updater is not None and self.updater.load_state(directory)
