"""``stage: prism_align`` — the PRISM alignment game as a LLaMA-Factory workflow.

The policy (``model_name_or_path``, e.g. the SFT output) is loaded by LLaMA-Factory itself
(``finetuning_type`` full / freeze / lora, quantisation, …) and prompts are rendered with the
run's ``template``; ``prism_discriminator`` names the (warmed-up) discriminator; ``dataset``
names alignment files (``dataset_info.json`` entries in ``dataset_dir``, or paths).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prism_plugin.llamafactory.align_rewards import DISCRIMINATOR, VERIFIABLE, RuleScorer
from prism_plugin.llamafactory.pairs import PairEncoder, resolve_dataset_files

PLOT_KEYS = ["loss", "valid_ratio", "reward", "disc/loss", "disc/accuracy", "caption/score_gap",
             "reasoning/score_gap", "response/score_gap", "response_length"]


def _settings(finetuning_args: Any, verifiable: bool) -> Any:
    from prism_plugin.llamafactory.align_trainer import AlignSettings

    return AlignSettings(
        segment_weights={"response": 1.0} if verifiable else finetuning_args.segment_weights,
        num_generations=finetuning_args.prism_num_generations,
        max_new_tokens=finetuning_args.prism_max_new_tokens,
        temperature=finetuning_args.prism_temperature,
        format_penalty=finetuning_args.prism_format_penalty,
        scale_advantages=finetuning_args.prism_scale_advantages,
        score_clip=finetuning_args.prism_score_clip,
        score_reg_coef=finetuning_args.prism_score_reg_coef,
        router_aux_coef=finetuning_args.prism_router_aux_coef,
        update_discriminator=(finetuning_args.prism_update_discriminator
                              and finetuning_args.prism_reward == DISCRIMINATOR),
        disc_update_every=finetuning_args.prism_disc_update_every,
        disc_max_grad_norm=finetuning_args.prism_disc_max_grad_norm,
        policy_loss=finetuning_args.prism_policy_loss,
        clip_low=finetuning_args.prism_clip_low,
        clip_high=finetuning_args.prism_clip_high,
        policy_epochs=finetuning_args.prism_policy_epochs,
        min_disc_accuracy=finetuning_args.prism_min_disc_accuracy,
    )


def _resume_dir(training_args: Any) -> str | None:
    """The checkpoint directory ``resume_from_checkpoint`` points at (``true``: the last one in output_dir)."""
    resume = training_args.resume_from_checkpoint
    if not resume:
        return None
    if str(resume).lower() == "true":
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(training_args.output_dir)
    return str(resume)


def _same_vocab(a: Any, b: Any) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def run_prism_align(
    model_args: Any, data_args: Any, training_args: Any, finetuning_args: Any, generating_args: Any, callbacks: list
) -> None:
    """Align the policy to the teacher's distribution against the discriminator (method.md §3)."""
    import torch
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.extras import logging
    from llamafactory.model import load_model, load_tokenizer

    from prism_plugin.discriminator.texts import TextScorer
    from prism_plugin.llamafactory.align_data import AlignEncoder, encode_align
    from prism_plugin.llamafactory.align_trainer import DISCRIMINATOR_DIR, PrismAlignTrainer
    from prism_plugin.llamafactory.disc_workflow import load_discriminator, train_and_save

    logger = logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's configured root logger
    reward = finetuning_args.prism_reward
    use_discriminator = reward == DISCRIMINATOR
    if use_discriminator and not finetuning_args.prism_discriminator:
        raise ValueError("stage prism_align needs `prism_discriminator: DIR` (a prism_disc output or upcycled model)")
    segments = list(finetuning_args.prism_segments)
    rule_scorer = None if use_discriminator else RuleScorer(reward, segments)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer, processor = tokenizer_module["tokenizer"], tokenizer_module["processor"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    checkpoint = _resume_dir(training_args)
    discriminator = scorer = pair_encoder = None
    if use_discriminator:
        disc_path = finetuning_args.prism_discriminator
        if checkpoint and (Path(checkpoint) / DISCRIMINATOR_DIR / "config.json").is_file():
            disc_path = str(Path(checkpoint) / DISCRIMINATOR_DIR)
            logger.info_rank0(f"prism_align: resuming the discriminator from {disc_path}")
        discriminator = load_discriminator(disc_path)
        scorer = TextScorer(discriminator)
        pair_encoder = PairEncoder(scorer, segments, data_args.cutoff_len)
    elif finetuning_args.prism_discriminator:
        logger.warning_rank0(f"prism_reward is {reward!r}: prism_discriminator is not used")
    encoder = AlignEncoder(template, tokenizer, processor, pair_encoder, data_args.cutoff_len,
                           finetuning_args.prism_max_new_tokens, require_ground_truth=reward == VERIFIABLE)
    files = resolve_dataset_files(list(data_args.dataset or []), data_args.dataset_dir)
    items, reports = encode_align(files, encoder, finetuning_args.prism_skip_invalid_rows,
                                  getattr(data_args, "media_dir", None))
    for report in reports:
        logger.info_rank0(report.summary())

    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)
    disc_optimizer = None
    if discriminator is not None:
        discriminator.to(training_args.device)
    if discriminator is not None and finetuning_args.prism_update_discriminator:
        disc_optimizer = torch.optim.AdamW(
            [p for p in discriminator.parameters() if p.requires_grad],
            lr=finetuning_args.prism_disc_learning_rate, weight_decay=finetuning_args.prism_disc_weight_decay,
        )
    same_vocab = scorer is None or _same_vocab(tokenizer, scorer.tokenizer)
    if not same_vocab:
        logger.warning_rank0("policy and discriminator tokenizers differ: rollouts are re-tokenised for scoring")
    settings = _settings(finetuning_args, reward == VERIFIABLE)
    logger.info_rank0(
        f"prism_align: {len(items)} prompts, reward {reward}, G={settings.num_generations}, "
        f"segments {settings.segment_weights}, policy loss {settings.policy_loss} × {settings.policy_epochs} epoch(s)"
    )
    training_args.remove_unused_columns = False
    trainer = PrismAlignTrainer(
        model=model,
        args=training_args,
        train_dataset=items,
        data_collator=lambda batch: batch,
        processing_class=processor if processor is not None else tokenizer,
        callbacks=callbacks,
        discriminator=discriminator,
        disc_optimizer=disc_optimizer,
        disc_tokenizer=scorer.tokenizer if scorer is not None else None,
        settings=settings,
        same_vocab=same_vocab,
        rule_scorer=rule_scorer,
    )
    trainer.disc_processor = scorer.processor if scorer is not None else None
    if checkpoint and trainer.load_discriminator_state(checkpoint):
        logger.info_rank0(f"prism_align: discriminator optimiser state restored from {checkpoint}")
    train_and_save(trainer, training_args, finetuning_args, reports, PLOT_KEYS)
