"""``stage: prism_align`` — the PRISM alignment game as a LLaMA-Factory workflow.

The policy (``model_name_or_path``, e.g. the SFT output) is loaded by LLaMA-Factory itself
(``finetuning_type`` full / freeze / lora, quantisation, …) and prompts are rendered with the
run's ``template``; ``prism_reward`` picks the scorer (the discriminator ``prism_discriminator``,
the verifiable reward, or a scorer file); ``dataset`` names alignment files (``dataset_info.json``
entries in ``dataset_dir``, or paths).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prism_plugin.arguments import DISCRIMINATOR, VERIFIABLE, PrismArguments, check_reward_spec
from prism_plugin.llamafactory.disc.data import resolve_dataset_files
from prism_plugin.scorers import Scorer

PLOT_KEYS = ["loss", "valid_ratio", "reward", "disc/loss", "disc/accuracy", "caption/score_gap",
             "reasoning/score_gap", "response/score_gap", "response_length"]


def compute_dtype(training_args: Any) -> Any:
    """The dtype a bf16 / fp16 run computes in (None: float32); the discriminator's forwards autocast to it."""
    import torch

    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None


def global_batch(args: PrismArguments, training_args: Any) -> str:
    """The batch a config gives per optimiser step, in words; a ConfigError when a group would not fit whole."""
    from prism_plugin.errors import ConfigError

    per_step = training_args.per_device_train_batch_size * training_args.world_size
    G = args.prism_num_generations
    accumulation = training_args.gradient_accumulation_steps
    if args.prism_groups_across_ranks:
        if per_step % G:
            raise ConfigError(f"prism_groups_across_ranks: per_device_train_batch_size × ranks = {per_step} rollouts "
                              f"must be a multiple of prism_num_generations {G}")
        prompts = per_step // G * accumulation
    else:
        prompts = per_step * accumulation
    return (f"global batch {prompts} prompts × {G} rollouts = {prompts * G} rollouts per optimizer step over "
            f"{training_args.world_size} rank(s)")


def build_scorer(args: PrismArguments, policy_tokenizer: Any, cutoff_len: int, device: Any, checkpoint: str | None,
                 logger: Any, compute_dtype: Any = None, training_args: Any = None) -> Scorer:
    """The scorer ``prism_reward`` names: the discriminator (resumed from ``checkpoint`` when it holds one,
    with an updater unless ``prism_update_discriminator: false``), the verifiable reward, or a scorer file."""
    from prism_plugin.scorers import FileScorer, VerifiableScorer, load_score_function

    reward = args.prism_reward
    if reward == VERIFIABLE:
        buffer = args.prism_overlong_buffer
        return VerifiableScorer((args.prism_max_new_tokens, buffer, args.prism_overlong_penalty) if buffer else None)
    if reward != DISCRIMINATOR:
        path, name = check_reward_spec(reward)
        return FileScorer(load_score_function(path, name), args.prism_segments, reward)
    from prism_plugin.discriminator.loading import load_discriminator
    from prism_plugin.discriminator.loss import DiscriminatorLoss
    from prism_plugin.discriminator.rendering import TextScorer
    from prism_plugin.discriminator.rollout_scorer import DiscriminatorScorer
    from prism_plugin.discriminator.updater import DiscriminatorOptimization, DiscriminatorUpdater
    from prism_plugin.llamafactory.align.trainer import DISCRIMINATOR_DIR

    if not args.prism_discriminator:
        raise ValueError("stage prism_align needs `prism_discriminator: DIR` (a prism_disc output or upcycled model)")
    path = args.prism_discriminator
    if checkpoint and (Path(checkpoint) / DISCRIMINATOR_DIR / "config.json").is_file():
        path = str(Path(checkpoint) / DISCRIMINATOR_DIR)
        logger.info_rank0(f"prism_align: resuming the discriminator from {path}")
    model = load_discriminator(path).to(device)
    loss = DiscriminatorLoss.from_args(args, model.config)
    deepspeed_config = None
    if training_args is not None and training_args.deepspeed:
        from prism_plugin.discriminator.optimizers import deepspeed_config as ds_config

        deepspeed_config = ds_config(training_args.hf_deepspeed_config.config, model.config.backbone_hidden_size,
                                     args.prism_disc_max_grad_norm, training_args.world_size)
    updater = (DiscriminatorUpdater(model, loss, DiscriminatorOptimization.from_args(args), device=device,
                                    deepspeed_config=deepspeed_config)
               if args.prism_update_discriminator else None)
    scorer = DiscriminatorScorer(TextScorer(model), args.prism_segments, policy_tokenizer=policy_tokenizer,
                                 cutoff_len=cutoff_len, loss=loss, updater=updater, compute_dtype=compute_dtype)
    if not scorer.same_vocab:
        logger.warning_rank0("policy and discriminator tokenizers differ: rollouts are re-tokenised for scoring")
    return scorer


def run_prism_align(
    model_args: Any, data_args: Any, training_args: Any, finetuning_args: Any, generating_args: Any, callbacks: list
) -> None:
    """Align the policy to the teacher's distribution against the discriminator (Wang et al. 2026, §3)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.extras import logging
    from llamafactory.model import load_model, load_tokenizer

    from prism_plugin.llamafactory.align.data import AlignEncoder, encode_align
    from prism_plugin.llamafactory.align.trainer import DISCRIMINATOR_DIR, PrismAlignTrainer
    from prism_plugin.llamafactory.rollout_engine import build_rollout_engine, check_rollout_engine
    from prism_plugin.llamafactory.training import train_and_save

    logger = logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's configured root logger
    args = finetuning_args
    batch_line = global_batch(args, training_args)  # a group that cannot fit whole stops the run here
    check_rollout_engine(args)  # prism_rollout_engine: vllm without a supported vLLM stops here
    if args.prism_reward != DISCRIMINATOR and args.prism_discriminator:
        logger.warning_rank0(f"prism_reward is {args.prism_reward!r}: prism_discriminator is not used")
    tokenizer_module = load_tokenizer(model_args)
    tokenizer, processor = tokenizer_module["tokenizer"], tokenizer_module["processor"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    checkpoint = training_args.resume_from_checkpoint  # a complete checkpoint folder (workflow.resolve_resume)
    scorer = build_scorer(args, tokenizer, data_args.cutoff_len, training_args.device, checkpoint, logger,
                          compute_dtype(training_args), training_args)
    encoder = AlignEncoder(template, tokenizer, processor, scorer, data_args.cutoff_len, args.prism_max_new_tokens)
    files = resolve_dataset_files(list(data_args.dataset or []), data_args.dataset_dir)
    items, reports = encode_align(files, encoder, args.prism_skip_invalid_rows, getattr(data_args, "media_dir", None),
                                  teacher="ignored" if args.prism_reward == VERIFIABLE else "required")
    for report in reports:
        logger.info_rank0(report.summary())

    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)
    logger.info_rank0(
        f"prism_align: {len(items)} prompts, reward {args.prism_reward}, G={args.prism_num_generations}, "
        f"segments {args.segment_weights}, policy loss {args.prism_policy_loss} × {args.prism_policy_epochs} epoch(s)"
    )
    logger.info_rank0(f"prism_align: {batch_line}")
    training_args.remove_unused_columns = False
    trainer = PrismAlignTrainer(
        model=model,
        args=training_args,
        train_dataset=items,
        data_collator=lambda batch: batch,
        processing_class=processor if processor is not None else tokenizer,
        callbacks=callbacks,
        prism_args=args,
        scorer=scorer,
        engine=build_rollout_engine(args, model_args, data_args, training_args, tokenizer, processor, template),
    )
    if checkpoint and scorer.load_state(str(Path(checkpoint) / DISCRIMINATOR_DIR)):
        logger.info_rank0(f"prism_align: discriminator optimiser state restored from {checkpoint}")
    train_and_save(trainer, training_args, finetuning_args, reports, PLOT_KEYS)
