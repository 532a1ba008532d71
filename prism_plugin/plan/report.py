"""A run's per-GPU memory plan: the models of its stage, the rules' items, the verdict, as text or JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism_plugin.plan import rules
from prism_plugin.plan.census import Census, discriminator_census, find_config, policy_census
from prism_plugin.plan.settings import PlanError, RunSettings, read_settings

GIB = 1024**3
DEFAULT_PROMPT_TOKENS = 1024
DEFAULT_RESERVE_GIB = 4.0
DEFAULT_EXPERTS, DEFAULT_TOP_K = 4, 2
ADAMW_OPTIMS = ("adamw_torch", "adamw_torch_fused")
DISC_HINT = "a discriminator directory, a prism_discriminator / qwen3_vl_moe config, or a dense Qwen3-VL config"
POLICY_HINT = "a model directory or its config.json"
NOT_COUNTED = (
    "activations of every forward/backward (gradient checkpointing or not)",
    "the vision tower's activations",
    "allocator fragmentation and cached blocks",
    "the CUDA context, NCCL and library workspaces (typically 0.5-2 GiB)",
)


@dataclass
class RolloutShape:
    """One ``generate`` call of ``prism_align`` on one rank."""

    sequences: int  # sequences in one generate call
    uncapped: int  # before prism_rollout_chunk_size
    tokens: int  # prompt + new tokens per sequence
    prompt_tokens: int
    bytes_per_token: int


@dataclass
class Plan:
    """Per-GPU memory of one run: ``items`` in bytes, plus what frames them."""

    settings: RunSettings
    gpu_memory_gib: float
    reserve_gib: float
    models: list[Census]
    items: list[rules.Item]
    batch: str
    rollout: RolloutShape | None = None
    notes: list[str] = field(default_factory=list)
    not_counted: list[str] = field(default_factory=list)

    @property
    def reserve_bytes(self) -> int:
        return int(self.reserve_gib * GIB)

    @property
    def phased(self) -> bool:
        """Whether some items are held during one phase only (a vLLM run: the pool and the loss logits)."""
        return any(i.phase != "always" for i in self.items)

    def peak(self, phase: str) -> int:
        """The items held during ``phase`` (``generation`` or ``update``) plus the reserve."""
        return sum(i.nbytes for i in self.items if i.phase in ("always", phase)) + self.reserve_bytes

    @property
    def total(self) -> int:
        """Every item plus the reserve; for a vLLM run, the larger of the generation and update peaks."""
        if self.phased:
            return max(self.peak("generation"), self.peak("update"))
        return sum(i.nbytes for i in self.items) + self.reserve_bytes

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory_gib * GIB

    @property
    def largest(self) -> rules.Item:
        return max(self.items, key=lambda i: i.nbytes)

    def max_chunk(self) -> int | None:
        """The largest ``prism_rollout_chunk_size`` (sequences per generate call) that fits; None without
        rollouts, 0 when even one sequence does not."""
        if self.rollout is None or self.phased:
            return None
        kv = sum(i.nbytes for i in self.items if i.what == "rollout KV cache")
        room = self.gpu_memory_gib * GIB - (self.total - kv)
        per_sequence = self.rollout.tokens * self.rollout.bytes_per_token
        return max(int(room // per_sequence), 0)

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "config": str(s.config_path),
            "stage": s.stage,
            "gpus": s.world,
            "gpu_memory_gib": self.gpu_memory_gib,
            "precision": _precision(s),
            "sharding": _sharding(s),
            "models": [
                {"label": c.label, "architecture": c.architecture, "source": c.source, "parameters": c.numel,
                 "trainable_parameters": c.trainable_numel, "notes": c.notes}
                for c in self.models
            ],
            "items": [
                {"model": i.model, "item": i.what, "bytes": i.nbytes, "gib": round(i.nbytes / GIB, 3),
                 "detail": i.detail, "phase": i.phase}
                for i in self.items
            ],
            "reserve_gib": self.reserve_gib,
            "total_bytes": self.total,
            "total_gib": round(self.total / GIB, 3),
            "peaks_gib": ({phase: round(self.peak(phase) / GIB, 3) for phase in ("generation", "update")}
                          if self.phased else None),
            "fits": self.fits,
            "largest": {"model": self.largest.model, "item": self.largest.what, "bytes": self.largest.nbytes},
            "batch": self.batch,
            "rollout": None if self.rollout is None else {
                "sequences_per_generate": self.rollout.sequences, "tokens_per_sequence": self.rollout.tokens,
                "prompt_tokens": self.rollout.prompt_tokens, "kv_bytes_per_token": self.rollout.bytes_per_token,
                "max_chunk_that_fits": self.max_chunk(),
            },
            "notes": self.notes,
            "not_counted": self.not_counted,
        }


def _precision(s: RunSettings) -> str:
    half = {None: "fp32"}.get(s.half, str(s.half).removeprefix("torch.").replace("bfloat16", "bf16").replace(
        "float16", "fp16"))
    return half + (" (pure_bf16)" if s.pure_bf16 else "")


def _sharding(s: RunSettings) -> str:
    if s.zero is None:
        return "DDP (no sharding)" if s.world > 1 else "single process"
    offload = " + optimizer offload" if s.zero.offload_optimizer else ""
    return f"DeepSpeed ZeRO-{s.zero.stage}{offload} ({s.deepspeed_path})"


def _rollout_shape(s: RunSettings, policy: Census, prompt_tokens: int) -> RolloutShape:
    """Sequences per generate call per rank: a micro-batch's rollouts, capped by ``prism_rollout_chunk_size``."""
    uncapped = _micro_batch_rollouts(s)
    chunk = s.prism["prism_rollout_chunk_size"]
    sequences = min(uncapped, chunk) if chunk else uncapped
    dtype = rules.rollout_dtype(policy, s)
    return RolloutShape(sequences, uncapped, prompt_tokens + s.prism["prism_max_new_tokens"], prompt_tokens,
                        rules.kv_bytes_per_token(policy, dtype))


def _micro_batch_rollouts(s: RunSettings) -> int:
    """Rollouts of one micro-batch on one rank (what a generate call and the policy-loss forward hold):
    per_device_train_batch_size prompts × G, or per_device_train_batch_size rollouts when a prompt's G are
    spread over the ranks."""
    per_device = s.per_device_batch
    return per_device if s.prism["prism_groups_across_ranks"] else per_device * s.prism["prism_num_generations"]


def _batch_line(s: RunSettings) -> str:
    """The global batch per optimizer step."""
    per_step = s.per_device_batch * s.grad_accum * s.world
    how = f"per_device_train_batch_size {s.per_device_batch} × accumulation {s.grad_accum} × {s.world} ranks"
    if s.stage != "prism_align":
        unit = "pairs" if s.stage == "prism_disc" else "examples"
        return f"{per_step:,} {unit} per optimizer step ({how})"
    g = s.prism["prism_num_generations"]
    if s.prism["prism_groups_across_ranks"]:
        rollouts = per_step
        prompts = f"{rollouts / g:g}" if rollouts % g else f"{rollouts // g}"
        how += ", prism_groups_across_ranks"
    else:
        prompts, rollouts = f"{per_step}", per_step * g
    return f"{prompts} prompts × {g} rollouts = {rollouts:,} rollouts per optimizer step over {s.world} ranks ({how})"


def build_plan(
    config_path: str | Path,
    gpus: int,
    gpu_memory_gib: float,
    *,
    policy_config: str | None = None,
    discriminator_config: str | None = None,
    upcycle_experts: int | None = None,
    upcycle_top_k: int | None = None,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    reserve_gib: float = DEFAULT_RESERVE_GIB,
) -> Plan:
    """Plan one training YAML on ``gpus`` GPUs of ``gpu_memory_gib`` GiB each (see the module docstring)."""
    if gpu_memory_gib <= 0 or reserve_gib < 0 or prompt_tokens < 1:
        raise PlanError("--gpu-memory must be > 0, --reserve-gib >= 0 and --prompt-tokens >= 1")
    s = read_settings(config_path, gpus)
    experts = DEFAULT_EXPERTS if upcycle_experts is None else upcycle_experts
    top_k = DEFAULT_TOP_K if upcycle_top_k is None else upcycle_top_k
    if experts < 0:
        raise PlanError(f"--upcycle-experts: expected >= 0, got {experts}")
    models: list[Census] = []
    items: list[rules.Item] = []
    notes: list[str] = []
    not_counted = list(NOT_COUNTED)
    rollout = None
    if s.stage == "prism_disc":
        if policy_config is not None:
            raise PlanError("--policy-config: stage prism_disc trains the discriminator named by model_name_or_path; "
                            "use --discriminator-config")
        config, source = find_config(s.raw.get("model_name_or_path"), "model_name_or_path", "--discriminator-config",
                                     discriminator_config, DISC_HINT)
        disc = discriminator_census(config, source, experts, top_k)
        models.append(disc)
        items += rules.trainer_model(disc, s, upcast_trainable=False)
    else:
        config, source = find_config(s.raw.get("model_name_or_path"), "model_name_or_path", "--policy-config",
                                     policy_config, POLICY_HINT)
        policy = policy_census(config, source, s.finetuning_keys)
        models.append(policy)
        items += rules.trainer_model(policy, s, upcast_trainable=True)
        if s.stage == "sft" and discriminator_config is not None:
            raise PlanError("--discriminator-config: stage sft trains no discriminator")
        if s.stage == "sft" and s.prism.get("prism_drift_monitor"):
            not_counted.append("prism_drift_monitor's discriminator (on the GPU only during a drift check)")
    if s.stage == "prism_align":
        if s.prism["prism_reward"] == "discriminator":
            config, source = find_config(s.prism["prism_discriminator"], "prism_discriminator",
                                         "--discriminator-config", discriminator_config, DISC_HINT)
            disc = discriminator_census(config, source, experts, top_k)
            models.append(disc)
            items += rules.side_discriminator(disc, s, trains=bool(s.prism["prism_update_discriminator"]))
            not_counted.append("the discriminator's scoring activations and prompt caches")
        elif discriminator_config is not None:
            raise PlanError(f"--discriminator-config: prism_reward is {s.prism['prism_reward']!r}, no discriminator")
        rollout = _rollout_shape(s, policy, prompt_tokens)
        logits = rules.policy_loss_logits(policy, s, _micro_batch_rollouts(s))
        if s.prism["prism_rollout_engine"] == "vllm":
            items.append(rules.vllm_pool(policy, s, gpu_memory_gib, rollout.uncapped, rollout.tokens))
            items.append(dataclasses.replace(logits, phase="update"))
            if s.prism["prism_vllm_sleep_mode"]:
                notes.append("vLLM sleep mode keeps the engine's weights in host memory between rollouts "
                             f"({rules.engine_weight_bytes(policy, s) / GIB:.2f} GiB per rank)")
        else:
            items.append(rules.rollout_kv(policy, s, rollout.sequences, rollout.tokens))
            items.append(logits)
        new = s.prism["prism_max_new_tokens"]
        cutoff = s.raw.get("cutoff_len")
        if isinstance(cutoff, int) and prompt_tokens + new > cutoff:
            notes.append(f"--prompt-tokens {prompt_tokens} + prism_max_new_tokens {new} exceeds cutoff_len {cutoff}: "
                         "such prompts are rejected")
    for census in models:
        notes += [f"{census.label}: {note}" for note in census.notes]
    if s.zero is not None and s.zero.stage >= 1:
        notes.append("DeepSpeed rows are each a peak: the reduce buckets (backward) and the fp32 gradient copy "
                     "(optimizer step) do not coexist, so the total over-states by the smaller of the two")
    optim = s.raw.get("optim")
    if optim is not None and optim not in ADAMW_OPTIMS:
        notes.append(f"optim {optim}: its state is counted as torch AdamW's")
    return Plan(s, gpu_memory_gib, reserve_gib, models, items, _batch_line(s), rollout, notes, not_counted)


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:8.2f}"


def format_plan(plan: Plan) -> str:
    """The plan as a table for a terminal."""
    s = plan.settings
    lines = [
        f"prism-plugin plan: {s.config_path.name} (stage {s.stage}) on {s.world} GPU(s) × "
        f"{plan.gpu_memory_gib:g} GiB; precision {_precision(s)}; {_sharding(s)}",
    ]
    for c in plan.models:
        lines.append(f"  {c.label}: {c.architecture} from {c.source}: {c.numel:,} parameters, "
                     f"{c.trainable_numel:,} trainable")
    lines.append("")
    width = max(len(f"{i.model} {i.what}") for i in plan.items) + 2
    lines.append(f"  {'per GPU'.ljust(width)}{'GiB':>8}  detail")
    for i in plan.items:
        lines.append(f"  {f'{i.model} {i.what}'.ljust(width)}{_gib(i.nbytes)}  {i.detail}")
    lines.append(f"  {'reserve (--reserve-gib)'.ljust(width)}{_gib(plan.reserve_bytes)}")
    if plan.phased:
        for phase in ("generation", "update"):
            lines.append(f"  {f'peak during {phase}'.ljust(width)}{_gib(plan.peak(phase))}")
    else:
        lines.append(f"  {'total'.ljust(width)}{_gib(plan.total)}")
    largest = plan.largest
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append("")
    lines.append(f"{verdict} in {plan.gpu_memory_gib:g} GiB per GPU; largest item: {largest.model} {largest.what} "
                 f"({largest.nbytes / GIB:.2f} GiB)")
    r = plan.rollout
    if r is not None and plan.phased:
        lines.append(f"rollouts: vLLM, {r.uncapped} sequences per rank per micro-batch, {r.prompt_tokens:,} prompt "
                     f"tokens (--prompt-tokens) + {r.tokens - r.prompt_tokens:,} new (the pool's row above: how many "
                     "run at once)")
    elif r is not None:
        chunk = plan.max_chunk()
        capped = f" (capped from {r.uncapped} by prism_rollout_chunk_size)" if r.sequences < r.uncapped else ""
        lines.append(f"rollouts: {r.sequences} sequences per generate call per rank{capped}, {r.prompt_tokens:,} "
                     f"prompt tokens (--prompt-tokens) + {r.tokens - r.prompt_tokens:,} new")
        if chunk == 0:
            lines.append("  even one sequence per generate call does not fit beside the rest")
        elif chunk < r.sequences:
            lines.append(f"  fits with prism_rollout_chunk_size: {chunk} (or smaller)")
        else:
            lines.append(f"  room for up to {chunk} sequences per generate call")
    lines.append(f"global batch: {plan.batch}")
    for note in plan.notes:
        lines.append(f"note: {note}")
    lines.append("not counted: " + "; ".join(plan.not_counted))
    return "\n".join(lines)
