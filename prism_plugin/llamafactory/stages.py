"""Entry point of the PRISM stages inside ``llamafactory-cli train``: parse, add callbacks, dispatch."""

from __future__ import annotations

from typing import Any


def run_prism_stage(config: dict[str, Any]) -> None:
    """Run ``stage: prism_disc`` or ``stage: prism_align`` the way LLaMA-Factory runs its own stages."""
    from llamafactory.extras import logging
    from llamafactory.hparams import get_train_args
    from llamafactory.train.callbacks import ReporterCallback

    from prism_plugin.llamafactory.checkpoints import resolve_resume
    from prism_plugin.llamafactory.log_callback import PrismLogCallback

    model_args, data_args, training_args, finetuning_args, generating_args = get_train_args(config.get("args"))
    resolve_resume(training_args, logging.get_logger(__name__).warning_rank0)
    callbacks = list(config.get("callbacks") or [])
    callbacks.append(PrismLogCallback(finetuning_args.stage))  # LLaMA-Factory's, with every PRISM metric
    callbacks.append(ReporterCallback(model_args, data_args, finetuning_args, generating_args))
    stage = finetuning_args.stage
    if stage == "prism_disc":
        from prism_plugin.llamafactory.disc.workflow import run_prism_disc

        run_prism_disc(model_args, data_args, training_args, finetuning_args, callbacks)
    elif stage == "prism_align":
        from prism_plugin.llamafactory.align.workflow import run_prism_align

        run_prism_align(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
    else:
        raise ValueError(f"unknown PRISM stage {stage!r}")
    release_process_group()


def release_process_group() -> None:
    """Destroy the distributed process group as LLaMA-Factory does after its own stages: a rank that exits
    with a live gloo/NCCL group can abort in the group's destructor while its peers are still saving."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
