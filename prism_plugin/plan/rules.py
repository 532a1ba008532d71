"""Accounting rules: per-GPU bytes of one model kind under the run's precision and sharding.

Each rule is one function over a :class:`~prism_plugin.plan.census.Census` (exact tensor counts) and
:class:`~prism_plugin.plan.settings.RunSettings`; its docstring is the rule. ``/N`` is a shard over the
N data-parallel ranks, rounded up per tensor or flat group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prism_plugin.plan.census import Census, Tensor
from prism_plugin.plan.settings import RunSettings

FP32 = torch.float32
STEP_BYTES = 4  # torch AdamW keeps one float32 ``step`` scalar per parameter tensor


@dataclass(frozen=True)
class Item:
    """One line of the plan: ``nbytes`` per GPU for ``what`` of ``model``, held ``always`` or only during one
    phase of the step (``generation``: the rollouts; ``update``: the policy loss)."""

    model: str
    what: str
    nbytes: int
    detail: str = ""
    phase: str = "always"


def shard(nbytes: int, ranks: int) -> int:
    """Bytes of one rank's shard: ``ceil(nbytes / ranks)``."""
    return -(-nbytes // ranks)


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16").replace(
        "float16", "fp16")


def held_dtype(t: Tensor, settings: RunSettings, upcast_trainable: bool) -> torch.dtype:
    """The dtype a parameter is held in without DeepSpeed: LLaMA-Factory's ``init_adapter`` upcasts trainable
    parameters to fp32 unless ``pure_bf16`` (ZeRO-3 skips it too, but ZeRO-3 is DeepSpeed's rule);
    frozen ones keep the checkpoint dtype."""
    if t.trainable and upcast_trainable and not settings.pure_bf16:
        return FP32
    return t.dtype


def _buffers(c: Census) -> int:
    return sum(b.numel * _size(b.dtype) for b in c.buffers)


def _dtype_mix(c: Census, s: RunSettings, upcast_trainable: bool) -> str:
    """E.g. ``fp32 trainable + bf16 frozen, replicated``."""
    parts = []
    for trainable, word in ((True, "trainable"), (False, "frozen")):
        dtypes = sorted({_name(held_dtype(t, s, upcast_trainable)) for t in c.params if t.trainable == trainable})
        if dtypes:
            parts.append(f"{'/'.join(dtypes)} {word}")
    return " + ".join(parts) + ", replicated"


def trainer_model(c: Census, s: RunSettings, upcast_trainable: bool) -> list[Item]:
    """The Trainer's model (the policy; the discriminator in ``prism_disc``), with the Trainer's AdamW.

    Without DeepSpeed (plain DDP when N > 1), nothing is sharded:
      weights: frozen parameters in the checkpoint dtype, trainable ones per :func:`held_dtype`, plus buffers;
      gradients: every trainable parameter, in its held dtype;
      DDP buckets (N > 1): a second copy of those gradients (``gradient_as_bucket_view`` is off in the Trainer);
      AdamW state: exp_avg + exp_avg_sq in the parameter's dtype, plus a 4-byte ``step`` per trainable tensor.
    DeepSpeed ZeRO stage s (the engine casts every parameter to bf16/fp16 when that is enabled; buffers stay):
      weights: all parameters at 2 bytes (4 in fp32), replicated; s = 3: each tensor of at least
        ``stage3_param_persistence_threshold`` elements /N (on the host with ``offload_param``), smaller
        ones replicated;
      fp32 master weights: a flat fp32 copy of the trainable parameters, /N for s >= 1 (DeepSpeed clones it
        even in fp32 runs); s = 0 keeps a replicated fp32 copy only under bf16/fp16;
      gradients: the half-precision gradients (replicated for s <= 1, a /N partition for s >= 2) plus, under
        bf16/fp16, the fp32 copy of the rank's partition made for the optimizer step (/N; replicated for s = 0);
      AdamW moments: fp32, 8 bytes per trainable parameter, /N for s >= 1;
      reduce bucket (s >= 1, contiguous_gradients): ``reduce_bucket_size`` elements in the gradient dtype,
        twice with ``overlap_comm``;
      s = 3 live parameters: up to ``stage3_max_live_parameters`` gathered half-precision elements (a bound);
      ``offload_optimizer`` (cpu/nvme): master weights, moments and the fp32 gradient copy live on the host.
    Each row is that item's peak; the reduce buckets (backward) and the fp32 gradient copy (step) never
    coexist, so their sum over-states the peak slightly. Checked against DeepSpeed 0.19's own tensors for
    ZeRO-1/2 on one process (``tests/zero_state.py``).
    """
    n, label = s.world, c.label
    trainable = [t for t in c.params if t.trainable]
    tensors = len(trainable)
    z = s.zero
    if z is None:
        weights = sum(t.numel * _size(held_dtype(t, s, upcast_trainable)) for t in c.params) + _buffers(c)
        grads = sum(t.numel * _size(held_dtype(t, s, upcast_trainable)) for t in trainable)
        moments = 2 * grads + STEP_BYTES * tensors
        grad_dtypes = sorted({_name(held_dtype(t, s, upcast_trainable)) for t in trainable})
        items = [
            Item(label, "weights", weights, _dtype_mix(c, s, upcast_trainable)),
            Item(label, "gradients", grads, "/".join(grad_dtypes) + ", replicated"),
            Item(label, "AdamW state", moments, "2 moments + step, replicated"),
        ]
        if n > 1:
            items.append(Item(label, "DDP gradient buckets", grads, "a copy of the gradients"))
        return items
    low = s.half or FP32
    numel = c.numel
    trainable_numel = sum(t.numel for t in trainable)
    if z.stage == 3:
        threshold = z.persistence_threshold(c.hidden_size)
        sharded = 0 if z.offload_param else sum(shard(t.numel, n) for t in c.params if t.numel >= threshold)
        weights = (sharded + sum(t.numel for t in c.params if t.numel < threshold)) * _size(low)
        where = "on the host (offload_param)" if z.offload_param else f"/{n}"
        weight_detail = f"{_name(low)}, {where} (tensors < {threshold:,} elements replicated)"
    else:
        weights, weight_detail = numel * _size(low), f"{_name(low)}, replicated"
    items = [Item(label, "weights", weights + _buffers(c), weight_detail)]
    shard_opt = n if z.stage >= 1 else 1
    master = 0 if (z.stage == 0 and low == FP32) else shard(trainable_numel * 4, shard_opt)
    grad_low = trainable_numel * _size(low)
    grad_low = shard(grad_low, n) if z.stage >= 2 else grad_low
    grad_fp32 = shard(trainable_numel * 4, shard_opt) if low != FP32 else 0
    moments = shard(trainable_numel * 8, shard_opt)
    host = z.offload_optimizer
    where = "on the host (offload_optimizer)" if host else f"/{shard_opt}"
    items += [
        Item(label, "fp32 master weights", 0 if host else master, where),
        Item(label, "gradients", grad_low + (0 if host else grad_fp32),
             f"{_name(low)}{f' /{n}' if z.stage >= 2 else ''}" + (f" + fp32 copy at the step {where}"
                                                                   if low != FP32 else "")),
        Item(label, "AdamW moments", 0 if host else moments, f"fp32 {where}"),
    ]
    if z.stage >= 1 and z.contiguous_gradients:
        buckets = 2 if z.overlap_comm else 1
        items.append(Item(label, "ZeRO reduce buckets", buckets * z.bucket_elements(c.hidden_size) * _size(low),
                          f"{buckets} × {z.bucket_elements(c.hidden_size):,} elements"))
    if z.stage == 3:
        live = min(z.max_live_parameters, numel)
        items.append(Item(label, "ZeRO-3 live parameters", live * _size(low), "upper bound"))
    return items


def side_discriminator(c: Census, s: RunSettings, trains: bool) -> list[Item]:
    """The discriminator ``prism_align`` trains beside the policy (``prism_plugin.discriminator.optimizers``).

    Without DeepSpeed it trains float32 master weights directly (bf16 / fp16 runs autocast its forwards, whose
    transient low-precision copies are activations): weights (+ buffers) and gradients fp32, replicated; AdamW's
    fp32 exp_avg + exp_avg_sq (8 bytes) + a 4-byte ``step`` per trainable tensor, /N across ranks
    (``ZeroRedundancyOptimizer``). Under DeepSpeed it is an engine of its own at ZeRO stage max(2, the run's):
    module weights in the run's half dtype (/N at stage 3), fp32 master weights /N, gradients in the module dtype
    /N, and AdamW state /N. A discriminator that does not train holds its weights only (fp32).
    """
    n, label = s.world, c.label
    z = s.zero
    trainable = [t for t in c.params if t.trainable]
    numel = sum(t.numel for t in trainable)
    adam = numel * 8 + STEP_BYTES * len(trainable)
    if z is None or not trains:
        items = [Item(label, "weights", c.numel * 4 + _buffers(c), "fp32 master weights, replicated")]
        if not trains:
            return items
        ranks = n if n > 1 else 1
        how = "ZeroRedundancyOptimizer" if n > 1 else "single process"
        return items + [
            Item(label, "gradients", numel * 4, "fp32, replicated"),
            Item(label, "AdamW state", shard(adam, ranks), f"fp32 2 moments + step /{ranks} ({how})"),
        ]
    stage = max(2, z.stage)
    low = s.half or FP32
    weights = c.numel * _size(low)
    weights = (shard(weights, n) if stage == 3 else weights) + _buffers(c)
    master = shard(numel * 4, n) if low != FP32 else 0
    return [
        Item(label, "weights", weights, f"{_name(low)}, {'/' + str(n) if stage == 3 else 'replicated'} "
                                        f"(DeepSpeed ZeRO-{stage})"),
        Item(label, "fp32 master weights", master, f"/{n}" if master else "none (fp32 weights)"),
        Item(label, "gradients", shard(numel * _size(low), n), f"{_name(low)} /{n}"),
        Item(label, "AdamW state", shard(adam, n), f"fp32 2 moments + step /{n}"),
    ]


def rollout_dtype(policy: Census, s: RunSettings) -> torch.dtype:
    """The dtype of the rollout keys/values: bf16/fp16 when the run is (the Trainer's autocast wraps the
    policy's forward; DeepSpeed casts its weights), else the dtype its text ``k_proj`` weight is held in."""
    if s.half is not None:
        return s.half
    return held_dtype(policy.kv_weight, s, upcast_trainable=True) if policy.kv_weight else FP32


def kv_bytes_per_token(policy: Census, dtype: torch.dtype) -> int:
    """Bytes one token adds to a ``DynamicCache``: every text layer's k_proj + v_proj outputs in ``dtype``."""
    return sum(policy.kv_features) * _size(dtype)


def rollout_kv(policy: Census, s: RunSettings, sequences: int, tokens: int) -> Item:
    """The rollout KV cache of one ``generate`` call: ``sequences`` × ``tokens`` × :func:`kv_bytes_per_token`
    (2 × text layers × kv heads × head_dim × dtype bytes); ``tokens`` = prompt + ``prism_max_new_tokens``."""
    dtype = rollout_dtype(policy, s)
    per_token = kv_bytes_per_token(policy, dtype)
    return Item(policy.label, "rollout KV cache", sequences * tokens * per_token,
                f"{sequences} seq × {tokens:,} tokens × {per_token / 1024:g} KiB/token ({_name(dtype)})")


LOGIT_BYTES_PER_ELEMENT = 14  # the head's bf16/fp16 logits (2), their fp32 copy (4), the tempered copy (4), exp (4)


def policy_loss_logits(policy: Census, s: RunSettings, rows: int) -> Item:
    """The policy loss's logits at their peak: ``rows`` rollouts (one micro-batch's) ×
    ``prism_logprob_chunk_size`` positions (all ``prism_max_new_tokens`` when unset) × vocab ×
    :data:`LOGIT_BYTES_PER_ELEMENT` (the output layer's logits and the fp32 temporaries of the log-softmax)."""
    new = int(s.prism["prism_max_new_tokens"])
    chunk = s.prism["prism_logprob_chunk_size"]
    positions = min(int(chunk), new) if chunk else new
    vocab = int(policy.config.get_text_config().vocab_size)
    how = f"chunks of {positions:,} positions" if chunk else "all positions at once"
    return Item(policy.label, "loss logits", rows * positions * vocab * LOGIT_BYTES_PER_ELEMENT,
                f"{rows} rollouts × {positions:,} × {vocab:,} vocab × {LOGIT_BYTES_PER_ELEMENT} B ({how})")


def engine_weight_bytes(policy: Census, s: RunSettings) -> int:
    """The policy's weights as the vLLM engine holds them (the rollout dtype)."""
    return policy.numel * _size(rollout_dtype(policy, s))


def vllm_pool(policy: Census, s: RunSettings, gpu_memory_gib: float, sequences: int, tokens: int) -> Item:
    """The colocated vLLM engine's pool: ``prism_vllm_gpu_memory_utilization`` of the card (its weights, in the
    rollout dtype, and its KV cache). With sleep mode it is held during generation only (weights to host
    memory, KV cache dropped); without, always."""
    fraction = float(s.prism["prism_vllm_gpu_memory_utilization"])
    pool = int(fraction * gpu_memory_gib * 1024**3)
    dtype = rollout_dtype(policy, s)
    weights = engine_weight_bytes(policy, s)
    per_sequence = tokens * kv_bytes_per_token(policy, dtype)
    room = max(pool - weights, 0)
    sleep = bool(s.prism["prism_vllm_sleep_mode"])
    detail = (f"{fraction:g} of the GPU: weights {weights / 1024**3:.2f} GiB ({_name(dtype)}) + KV cache "
              f"{room / 1024**3:.2f} GiB ({room // per_sequence} seq × {tokens:,} tokens at once; a micro-batch has "
              f"{sequences}); " + ("sleep mode: generation only" if sleep else "no sleep mode: held all step"))
    return Item(policy.label, "vLLM pool", pool, detail, "generation" if sleep else "always")
