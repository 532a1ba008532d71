"""``VLLMRolloutEngine``: rollouts from an in-process ``vllm.LLM``, behind :class:`~prism_plugin.rollout.RolloutEngine`.

Colocated, as trl's ``vllm_mode="colocate"`` and EasyR1 run it: every rank holds its own engine
(``distributed_executor_backend="external_launcher"``, tensor parallel 1) beside the policy it trains,
on ``gpu_memory_utilization`` of the card. With sleep mode the engine gives its memory back between
rollouts (``sleep(level=1)``: weights to host memory, KV cache dropped) and takes it again in two steps,
the weights before a sync and the KV cache before generating, so the policy, the discriminator and their
optimisers have the card during the update. vLLM's multimodal caches are emptied after every rollout
(EasyR1 found the encoder cache leaks otherwise).

Weights: :meth:`VLLMRolloutEngine.load_policy` pushes the policy's weights (:mod:`.weights`) when it is
another policy object or its ``version`` changed — the trainer passes its optimiser step, so a sync
happens once per optimiser step, before the step's first rollout, and never during gradient
accumulation. ``version=None`` means the weights never change (``evaluate``, ``make-pairs``); a policy
of None means the checkpoint vLLM loaded itself.

Sampling equals :class:`~prism_plugin.rollout.HFRolloutEngine`'s: ``num_samples`` per prompt, the same
temperature / top-p / top-k, ``max_new_tokens``, the end-of-turn token as the only stop (the model's
other end-of-sequence ids are ignored, as ``generate(eos_token_id=eot)`` does), vision tokens never
sampled (``logit_bias`` −100, EasyR1's way); the engine's generator is seeded with ``seed + rank``, so
ranks draw differently and every call continues the stream. Consecutive copies
of one prompt object (``prism_groups_across_ranks`` hands a rank several copies) become one request with
``n`` samples (greedy: ``n`` requests, vLLM's greedy sampler takes ``n`` 1 only).
"""

from __future__ import annotations

import logging
import os
import socket
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prism_plugin.rollout import PolicyPrompt, Rollouts, Sampling, end_of_turn_id, vision_suppress_ids
from prism_plugin.vllm_rollout.prompts import ImagesFn, PromptConverter, load_images_plain
from prism_plugin.vllm_rollout.weights import Bucket, push_weights

logger = logging.getLogger(__name__)

BLOCKED_LOGIT_BIAS = -100.0  # the most negative bias vLLM accepts


@dataclass(frozen=True)
class VLLMSettings:
    """How the engine is built. ``model`` is the directory vLLM loads its config, tokenizer and first weights
    from (the policy's checkpoint, or a LoRA policy's base model); ``dtype`` ``auto`` is the checkpoint's."""

    model: str
    tokenizer: str | None = None
    gpu_memory_utilization: float = 0.3
    sleep_mode: bool = True
    enforce_eager: bool = False
    dtype: str = "auto"
    max_model_len: int | None = None
    seed: int = 0
    bucket_bytes: int = 512 * 1024**2
    return_log_probs: bool = False
    mm_processor_kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # any further vllm.LLM keyword


def request_runs(prompts: Sequence[PolicyPrompt]) -> list[tuple[int, int]]:
    """``(first index, copies)`` for each run of consecutive entries that are the same prompt object."""
    runs: list[tuple[int, int]] = []
    for k, prompt in enumerate(prompts):
        if runs and prompts[runs[-1][0]] is prompt:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((k, 1))
    return runs


def request_rows(prompts: Sequence[PolicyPrompt], num_samples: int, greedy: bool) -> list[list[int]]:
    """For each vLLM request, the prompt index of each completion it returns, prompt-major: a run of copies of
    one prompt is one request with ``copies × num_samples`` samples — or, greedy (vLLM samples greedily only
    with ``n`` 1), that many requests of one."""
    requests: list[list[int]] = []
    for start, copies in request_runs(prompts):
        rows = [start + j // num_samples for j in range(copies * num_samples)]
        requests += [[row] for row in rows] if greedy else [rows]
    return requests


def sampling_kwargs(sampling: Sampling, n: int, eot_id: int, blocked_ids: Sequence[int], log_probs: bool
                    ) -> dict[str, Any]:
    """``vllm.SamplingParams`` keywords that sample as :class:`~prism_plugin.rollout.HFRolloutEngine` does. No
    per-request seed: the engine's own generator, seeded per rank, draws every request (per-request seeds
    also break vLLM's CPU build once a prefill is chunked: "CPU Generator does not use offset")."""
    kwargs: dict[str, Any] = {
        "n": n, "max_tokens": sampling.max_new_tokens, "stop_token_ids": [eot_id], "ignore_eos": True,
        "detokenize": False, "skip_special_tokens": False,
    }
    if sampling.temperature == 0:
        kwargs["temperature"] = 0.0
    else:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.top_k > 0:
            kwargs["top_k"] = sampling.top_k
    if blocked_ids:
        kwargs["logit_bias"] = {int(i): BLOCKED_LOGIT_BIAS for i in blocked_ids}
    if log_probs:
        kwargs["logprobs"] = 0  # the sampled token's own log-probability
    return kwargs


def rollouts_from_outputs(outputs: Sequence[Any], rows: Sequence[Sequence[int]], eot_id: int, pad_id: int,
                          log_probs: bool) -> Rollouts:
    """vLLM's ``RequestOutput`` per request (``rows``: :func:`request_rows`) → :class:`Rollouts`, each completion
    cut after its first end-of-turn token; ``log_probs`` adds the sampler's per-token log-probabilities (0 on
    padding)."""
    sequences: list[list[int]] = []
    prompt_index: list[int] = []
    sampled: list[list[float]] = []
    for output, request in zip(outputs, rows, strict=True):
        completions = list(output.outputs)
        if len(completions) != len(request):
            raise RuntimeError(f"vLLM returned {len(completions)} completions for {len(request)} asked")
        for completion, prompt in zip(completions, request, strict=True):
            ids = list(completion.token_ids)
            if eot_id in ids:
                ids = ids[: ids.index(eot_id) + 1]
            sequences.append(ids)
            prompt_index.append(prompt)
            if log_probs:
                sampled.append([float(step[token].logprob) for step, token in zip(completion.logprobs, ids,
                                                                                    strict=False)])
    rollouts = Rollouts.from_sequences(sequences, prompt_index, eot_id, pad_id)
    if log_probs:
        values = torch.zeros(rollouts.completions.shape, dtype=torch.float32)
        for row, row_values in enumerate(sampled):
            values[row, : len(row_values)] = torch.tensor(row_values)
        rollouts.log_probs = values
    return rollouts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launcher_environment() -> dict[str, str]:
    """The ``RANK`` … ``MASTER_PORT`` variables vLLM's external launcher reads, from the running process
    group (torchrun sets them all), or a one-process group on a free port."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = 0, 1
    return {"RANK": str(rank), "LOCAL_RANK": os.environ.get("LOCAL_RANK", str(rank)), "WORLD_SIZE": str(world),
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT", str(_free_port()))}


def sleep_mode_available() -> bool:
    """Whether this vLLM platform supports sleep mode (CUDA, ROCm; not the CPU build)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


def build_llm(settings: VLLMSettings, sleep_mode: bool) -> Any:
    """The in-process ``vllm.LLM`` of one rank (external launcher, tensor parallel 1)."""
    from vllm import LLM

    launcher = launcher_environment()
    kwargs: dict[str, Any] = {
        "model": settings.model, "tokenizer": settings.tokenizer or settings.model, "dtype": settings.dtype,
        "gpu_memory_utilization": settings.gpu_memory_utilization, "enforce_eager": settings.enforce_eager,
        "seed": settings.seed + int(launcher["RANK"]), "tensor_parallel_size": 1,
        "distributed_executor_backend": "external_launcher", "enable_sleep_mode": sleep_mode,
        "enable_prefix_caching": True, "max_model_len": settings.max_model_len,
    }
    if settings.return_log_probs:
        kwargs["logprobs_mode"] = "processed_logprobs"  # after temperature, as the trainer's log-probs
    if settings.mm_processor_kwargs:
        kwargs.update(mm_processor_kwargs=dict(settings.mm_processor_kwargs), mm_processor_cache_gb=0)
    kwargs.update(settings.extra)
    # The launcher reads these while the engine starts; they are put back after, so that a child process does
    # not inherit a MASTER_PORT this process holds.
    saved = {key: os.environ.get(key) for key in launcher}
    os.environ.update(launcher)
    try:
        return LLM(**kwargs)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _load_bucket(worker: Any, bucket: Bucket) -> None:
    """Load one bucket into the worker's model: ``reload_weights`` where the vLLM release has it (it re-runs
    the kernels' weight processing, which the CPU build needs), else the model's ``load_weights`` (trl's)."""
    import inspect

    runner = worker.model_runner
    reload = getattr(runner, "reload_weights", None)
    if reload is not None and "weights_iterator" in inspect.signature(reload).parameters:
        reload(weights_iterator=bucket, is_checkpoint_format=True)
    else:
        runner.model.load_weights(weights=bucket)


class VLLMRolloutEngine:
    """See the module docstring. ``processor`` is the policy's processor or tokenizer; ``images_fn`` reads a
    prompt's images as the policy's prompt rendering did (LLaMA-Factory's plugin in training); ``llm`` an
    engine already built (tests share one)."""

    def __init__(self, processor: Any, settings: VLLMSettings, *, images_fn: ImagesFn = load_images_plain,
                 llm: Any = None) -> None:
        from prism_plugin.vllm_rollout.versions import require_vllm

        require_vllm()
        tokenizer = getattr(processor, "tokenizer", processor)
        self.eot_id = end_of_turn_id(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot_id
        self.blocked_ids = vision_suppress_ids(tokenizer)
        self.settings = settings
        self.convert = PromptConverter(processor, images_fn)
        if settings.sleep_mode and not sleep_mode_available():
            logger.warning("vLLM sleep mode is not available on this platform: the engine keeps its memory")
        self.sleep_mode = settings.sleep_mode and sleep_mode_available()
        self._owns_process_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        self.llm = llm if llm is not None else build_llm(settings, self.sleep_mode)
        self._synced_policy: weakref.ref | None = None  # the policy whose weights vLLM holds (a dead ref: none)
        self._synced_version: int | None = None
        self._awake: set[str] = {"weights", "kv_cache"}
        self.syncs = 0  # weight syncs so far
        self.pushed_tensors = 0  # tensors pushed so far
        self._sleep()

    # ------------------------------------------------------------------ memory

    def _sleep(self) -> None:
        if self.sleep_mode and self._awake:
            self.llm.sleep(level=1)
            self._awake.clear()

    def _wake(self, tag: str) -> None:
        if self.sleep_mode and tag not in self._awake:
            self.llm.wake_up(tags=[tag])
            self._awake.add(tag)

    def _clear_caches(self) -> None:
        """Empty vLLM's multimodal processor and encoder caches (the encoder cache leaks otherwise)."""
        if hasattr(self.llm, "reset_mm_cache"):
            self.llm.reset_mm_cache()
        engine = getattr(self.llm, "llm_engine", None)
        if hasattr(engine, "reset_encoder_cache"):
            engine.reset_encoder_cache()

    # ------------------------------------------------------------------ weights

    def load_policy(self, policy: torch.nn.Module | None, version: int | None = None) -> None:
        """Sync ``policy``'s weights into vLLM unless they are the ones it holds (same object and version)."""
        same_policy = self._synced_policy is not None and self._synced_policy() is policy
        if policy is None or (same_policy and self._synced_version == version):
            return
        self._wake("weights")
        self.pushed_tensors += push_weights(policy, self._load, changing_only=same_policy,
                                            bucket_bytes=self.settings.bucket_bytes)
        self.llm.reset_prefix_cache()
        self._synced_policy, self._synced_version = weakref.ref(policy), version
        self.syncs += 1

    def _load(self, bucket: Bucket) -> None:
        self.llm.collective_rpc(_load_bucket, args=(bucket,))

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(self, prompts: Sequence[PolicyPrompt], num_samples: int, sampling: Sampling) -> Rollouts:
        from vllm import SamplingParams

        rows = request_rows(prompts, num_samples, greedy=sampling.temperature == 0)
        converted: dict[int, dict[str, Any]] = {}
        for request in rows:
            if request[0] not in converted:
                converted[request[0]] = self.convert(prompts[request[0]])
        requests = [converted[request[0]] for request in rows]
        log_probs = self.settings.return_log_probs
        params = [SamplingParams(**sampling_kwargs(sampling, len(request), self.eot_id, self.blocked_ids, log_probs))
                  for request in rows]
        self._wake("weights")
        self._wake("kv_cache")
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            self._clear_caches()
            self._sleep()
        return rollouts_from_outputs(outputs, rows, self.eot_id, self.pad_id, log_probs)

    def close(self) -> None:
        """Free the engine and vLLM's process groups (the default one too when vLLM created it), so another
        engine can be built in this process."""
        import gc

        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        self.llm = None
        destroy_model_parallel()
        if self._owns_process_group:
            destroy_distributed_environment()

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
