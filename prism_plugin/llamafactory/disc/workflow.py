"""``stage: prism_disc`` — discriminator warm-up as a LLaMA-Factory workflow.

``model_name_or_path`` is a PRISM discriminator (``prism-plugin upcycle`` output or a warmed-up
one); ``dataset`` names warm-up pair files (``dataset_info.json`` entries in ``dataset_dir``, or
paths). Writes a self-contained discriminator (weights + processor) to ``output_dir``.
"""

from __future__ import annotations

import random
from typing import Any

from prism_plugin.llamafactory.disc.data import PairCollator, PairEncoder, encode_pairs, resolve_dataset_files

PLOT_KEYS = ["loss", "eval_loss", "accuracy", "eval_accuracy", "caption/accuracy", "reasoning/accuracy"]


def _split_eval(features: list, val_size: float, seed: int) -> tuple[list, list]:
    if not val_size:
        return features, []
    count = int(val_size) if val_size >= 1 else max(1, round(len(features) * val_size))
    order = list(range(len(features)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [f for i, f in enumerate(features) if i not in held], [f for i, f in enumerate(features) if i in held]


def run_prism_disc(model_args: Any, data_args: Any, training_args: Any, finetuning_args: Any, callbacks: list) -> None:
    """Warm up the discriminator on teacher ≻ student pairs (Wang et al. 2026, §3) with a transformers Trainer."""
    from llamafactory.extras import logging

    from prism_plugin.discriminator.loading import load_discriminator
    from prism_plugin.discriminator.rendering import TextScorer
    from prism_plugin.llamafactory.disc.trainer import PrismDiscTrainer

    logger = logging.get_logger(f"llamafactory.{__name__}")  # under LLaMA-Factory's configured root logger
    segments = list(finetuning_args.prism_segments)
    model = load_discriminator(model_args.model_name_or_path)
    scorer = TextScorer(model)
    encoder = PairEncoder(scorer, segments, data_args.cutoff_len)
    skip = finetuning_args.prism_skip_invalid_rows
    media_dir = getattr(data_args, "media_dir", None)
    files = resolve_dataset_files(list(data_args.dataset or []), data_args.dataset_dir)
    train, reports = encode_pairs(files, encoder, skip, media_dir)
    if data_args.eval_dataset:
        eval_files = resolve_dataset_files(list(data_args.eval_dataset), data_args.dataset_dir)
        evaluation, eval_reports = encode_pairs(eval_files, encoder, skip, media_dir)
        reports += eval_reports
    else:
        train, evaluation = _split_eval(train, data_args.val_size, training_args.seed)
    for report in reports:
        logger.info_rank0(report.summary())
    logger.info_rank0(f"prism_disc: {len(train)} training pairs × {len(segments)} segments, {len(evaluation)} eval")

    training_args.remove_unused_columns = False
    trainer = PrismDiscTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation or None,
        data_collator=PairCollator(segments, pad_id=scorer.tokenizer.pad_token_id or 0),
        processing_class=scorer.processor,
        callbacks=callbacks,
        segments=segments,
        router_aux_coef=(finetuning_args.prism_router_aux_coef if finetuning_args.prism_router_aux_coef is not None
                         else model.config.router_aux_loss_coef),
    )
    if training_args.do_train:
        from prism_plugin.llamafactory.training import train_and_save

        train_and_save(trainer, training_args, finetuning_args, reports, PLOT_KEYS)
    if training_args.do_eval and evaluation:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
