"""Rollouts: completions sampled from a policy, behind one engine interface.

Every sampler in the package — the alignment stage, ``align-preview``, ``make-pairs``, the drift
monitor and ``evaluate`` — asks a :class:`RolloutEngine` for the completions of rendered prompts.
:class:`HFRolloutEngine` (transformers ``generate``) is the implementation today, and the package's
one ``generate`` call site.

An engine is one class with the two methods of :class:`RolloutEngine`:

- ``load_policy(policy, version)`` — the trainer calls it before every rollout batch with the policy
  being trained and its optimiser step; an engine with weights of its own (vLLM:
  :mod:`prism_plugin.vllm_rollout`) syncs them when the policy object or the version changed, where
  the HF engine just keeps a reference;
- ``generate(prompts, num_samples, sampling)`` — ``num_samples`` completions of every prompt, returned
  through :meth:`Rollouts.from_sequences`. A :class:`PolicyPrompt` holds the processor-*expanded* ids (as
  many ``<|image_pad|>`` per image as it has merged patches, what the policy's forward takes); an engine
  that runs its own processor, such as vLLM, must be given one placeholder per image plus the images and
  expand them itself (:class:`prism_plugin.vllm_rollout.prompts.PromptConverter`), never the expanded ids.

Rollouts come back prompt-major (``num_samples`` rows per prompt), right-padded, with a mask
that covers each completion up to and including its first end-of-turn token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from prism_plugin.compat import TOKEN_TYPES_KWARG, rope_index_takes_token_types, token_types
from prism_plugin.rng import SamplingStream

END_OF_TURN = "<|im_end|>"
# Sampled by a policy, these break the image-feature bookkeeping of Qwen-VL models.
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def end_of_turn_id(tokenizer: Any) -> int:
    """Id of ``<|im_end|>`` (the end-of-turn token a policy emits), else the tokenizer's eos id."""
    idx = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    return int(idx) if isinstance(idx, int) and idx != tokenizer.unk_token_id else int(tokenizer.eos_token_id)


def vision_suppress_ids(tokenizer: Any) -> list[int]:
    """Ids of the vision special tokens this tokenizer has (for ``generate(suppress_tokens=...)``)."""
    ids = tokenizer.convert_tokens_to_ids(list(VISION_SPECIAL_TOKENS))
    return [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]


def completion_mask(completions: torch.Tensor, eot_id: int) -> torch.Tensor:
    """(B, T) long mask: 1 up to and including each row's first end-of-turn token, 0 after it."""
    is_eot = completions == eot_id
    return ((is_eot.cumsum(-1) - is_eot.long()) == 0).long()


@dataclass(frozen=True)
class PolicyPrompt:
    """One prompt rendered for the policy: token ids (image placeholders expanded to one token per merged
    patch), the processor's tensors for its images (``pixel_values``, ``image_grid_thw`` …), and the images
    themselves (paths or bytes, as the row gave them) for engines that process them on their own."""

    input_ids: list[int]
    mm_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    images: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Sampling:
    """How to sample: ``temperature`` 0 means greedy decoding; no top-k / top-p by default."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


@dataclass
class Rollouts:
    """Completions of ``prompt_index.max() + 1`` prompts, prompt-major, right-padded.

    ``completions`` (N, T) token ids; ``mask`` (N, T) 1 up to and including the first end-of-turn
    token (a row without one — truncated at the budget — is all ones over its tokens);
    ``prompt_index`` (N,) the prompt each row answers; ``log_probs`` (N, T) the sampler's log-probability of
    each token, where the engine reports them (None otherwise).
    """

    completions: torch.Tensor
    mask: torch.Tensor
    prompt_index: torch.Tensor
    log_probs: torch.Tensor | None = None

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], prompt_index: Sequence[int], eot_id: int,
                       pad_id: int) -> Rollouts:
        """Rollouts from per-row completion token ids (any engine's output)."""
        width = max([len(s) for s in sequences] + [1])
        completions = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        present = torch.zeros_like(completions)
        for row, ids in enumerate(sequences):
            completions[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
            present[row, : len(ids)] = 1
        return cls(completions, completion_mask(completions, eot_id) * present,
                   torch.as_tensor(list(prompt_index), dtype=torch.long))

    @property
    def lengths(self) -> torch.Tensor:
        """(N,) completion tokens per row (end-of-turn token included)."""
        return self.mask.sum(-1)

    def rows_of(self, prompt: int) -> torch.Tensor:
        """Row indices answering prompt ``prompt``."""
        return torch.nonzero(self.prompt_index == prompt).squeeze(-1)


class RolloutEngine(Protocol):
    """Samples completions for rendered prompts; see the module docstring for writing one. ``eot_id`` is
    the end-of-turn token that ends a completion, ``pad_id`` the id right-padding uses; ``rng`` the stream
    random sampling draws from (None: torch's global generators), set by the trainer to this rank's
    :class:`~prism_plugin.rng.SamplingStream` so that ranks sample apart and a resumed run samples as the
    uninterrupted one would."""

    eot_id: int
    pad_id: int
    rng: SamplingStream | None

    def load_policy(self, policy: torch.nn.Module | None, version: int | None = None) -> None:
        """Make ``policy`` (the current weights) the one to sample from; ``version`` changes whenever its weights
        do (the trainer's optimiser step; None: they never change)."""

    def generate(self, prompts: Sequence[PolicyPrompt], num_samples: int, sampling: Sampling) -> Rollouts:
        """``num_samples`` completions of every prompt."""


def repeat_rows(mm_inputs: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    """One prompt's multimodal tensors repeated for ``times`` rows (Qwen-VL pixel rows are flattened
    patches, so whole tensors repeat)."""
    return {key: value.repeat(times, *([1] * (value.dim() - 1))) for key, value in mm_inputs.items()}


class HFRolloutEngine:
    """Rollouts from transformers ``generate`` on the policy itself (also a PEFT-wrapped one).

    Each prompt is expanded to ``num_samples`` rows; rows go to ``generate`` in chunks of at most
    ``chunk_size`` sequences (None: all at once), left-padded so every row continues from the same
    column, which bounds the KV cache of one call without changing what is sampled per row. Vision
    special tokens are suppressed; sampling stops at the end-of-turn token.
    """

    def __init__(self, tokenizer: Any, *, chunk_size: int | None = None) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 (or None for one call); got {chunk_size}")
        self.eot_id = end_of_turn_id(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot_id
        self.suppress_ids = vision_suppress_ids(tokenizer)
        self.chunk_size = chunk_size
        self.policy: torch.nn.Module | None = None
        self.rng: SamplingStream | None = None

    def load_policy(self, policy: torch.nn.Module | None, version: int | None = None) -> None:
        self.policy = policy

    @torch.no_grad()
    def generate(self, prompts: Sequence[PolicyPrompt], num_samples: int, sampling: Sampling) -> Rollouts:
        if self.policy is None:
            raise RuntimeError("HFRolloutEngine.generate before load_policy")
        rows = [k for k in range(len(prompts)) for _ in range(num_samples)]
        step = self.chunk_size or max(len(rows), 1)
        was_training = self.policy.training
        self.policy.eval()
        stream = self.rng.active(next(self.policy.parameters()).device) if self.rng else contextlib.nullcontext()
        try:
            sequences = []
            with stream:
                for start in range(0, len(rows), step):
                    sequences += self._generate_rows([prompts[k] for k in rows[start : start + step]], sampling)
        finally:
            self.policy.train(was_training)
        return Rollouts.from_sequences(sequences, rows, self.eot_id, self.pad_id)

    def _generate_rows(self, prompts: Sequence[PolicyPrompt], sampling: Sampling) -> list[list[int]]:
        """One ``generate`` call over one row per prompt in ``prompts``; completion ids per row."""
        policy = self.policy
        device = next(policy.parameters()).device
        width = max(len(p.input_ids) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt.input_ids):] = torch.as_tensor(prompt.input_ids)
            attention[row, width - len(prompt.input_ids):] = 1
        ids, attention = ids.to(device), attention.to(device)
        mm: dict[str, torch.Tensor] = {}
        for key in ("pixel_values", "image_grid_thw"):
            parts = [p.mm_inputs[key] for p in prompts if key in p.mm_inputs]
            if parts:
                mm[key] = torch.cat(parts).to(device)
        if "pixel_values" in mm and rope_index_takes_token_types(policy):
            mm[TOKEN_TYPES_KWARG] = token_types(ids, policy.config).long()
        greedy = sampling.temperature == 0
        sample_kwargs = {} if greedy else {"temperature": sampling.temperature, "top_k": sampling.top_k,
                                           "top_p": sampling.top_p}
        out = policy.generate(
            input_ids=ids, attention_mask=attention, **mm, do_sample=not greedy, **sample_kwargs,
            max_new_tokens=sampling.max_new_tokens, use_cache=True, eos_token_id=self.eot_id,
            pad_token_id=self.pad_id, suppress_tokens=self.suppress_ids or None,
        )
        completions = out[:, width:].cpu()
        lengths = completion_mask(completions, self.eot_id).sum(-1)
        return [completions[row, : int(lengths[row])].tolist() for row in range(len(prompts))]
