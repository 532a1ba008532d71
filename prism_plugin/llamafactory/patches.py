"""The patches applied to LLaMA-Factory's modules as they load (see :mod:`.bootstrap`).

Every private LLaMA-Factory symbol we touch is named in :data:`PATCHED_SYMBOLS` and checked
before patching; a mismatch raises an error naming the supported versions (the bootstrap
reports it and leaves stock LLaMA-Factory untouched).
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Literal

from prism_plugin.llamafactory.toolkit import (  # noqa: F401  (names the start-up hook and tests read here)
    SUPPORTED_LLAMAFACTORY,
    UnsupportedLlamaFactoryError,
    llamafactory_version,
    supported_versions,
    untested_version_note,
)

PRISM_STAGES = ("prism_disc", "prism_align")

PATCHED_SYMBOLS = {
    "llamafactory.hparams.parser": ("_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS", "get_last_checkpoint"),
    "llamafactory.train.tuner": ("_training_function", "read_args", "export_model"),
    "llamafactory.data.template": ("TEMPLATES", "register_template"),
    "transformers.models.auto.modeling_auto": ("AutoModel",),
    # LlamaBoard (llamafactory-cli webui), all patched at once by patch_board when its interface module loads
    "llamafactory.webui.interface": ("create_train_tab",),
    "llamafactory.extras.constants": ("TRAINING_STAGES",),
    "llamafactory.webui.common": ("DEFAULT_SAVE_DIR", "DEFAULT_DATA_DIR", "load_dataset_info", "get_save_dir"),
    "llamafactory.webui.locales": ("LOCALES", "ALERTS"),
    "llamafactory.webui.control": ("list_datasets", "get_trainer_info"),
    "llamafactory.webui.runner": ("get_trainer_info", "Runner._parse_train_args", "Runner._initialize",
                                  "Runner.monitor"),
    "llamafactory.webui.manager": ("Manager.get_base_elems", "Manager.get_elem_by_id"),
    "llamafactory.webui.components.train": ("create_train_tab", "list_datasets"),
    "llamafactory.webui.components.eval": ("list_datasets",),
}
BOARD_MODULES = tuple(name for name in PATCHED_SYMBOLS
                      if name.startswith(("llamafactory.webui.", "llamafactory.extras.")))


def _require(module: ModuleType) -> None:
    missing = [name for name in PATCHED_SYMBOLS[module.__name__] if not hasattr(module, name)]
    if missing:
        raise UnsupportedLlamaFactoryError(
            f"LLaMA-Factory {llamafactory_version()}: {module.__name__} lacks {', '.join(missing)}; "
            f"prism-plugin supports {supported_versions()}"
        )


# --------------------------------------------------------------------------- arguments


def make_finetuning_arguments(base: type) -> type:
    """``FinetuningArguments`` with the PRISM stages in ``stage`` and the ``prism_*`` keys added."""
    from prism_plugin.arguments import PrismArguments

    stages = tuple(base.__dataclass_fields__["stage"].type.__args__) + PRISM_STAGES
    if getattr(base, "__prism_patched__", False):
        return base
    namespace = {
        "__annotations__": {"stage": Literal[stages]},  # type: ignore[valid-type]
        "stage": dataclasses.field(
            default="sft", metadata={"help": f"Which stage will be performed in training: {', '.join(stages)}."}
        ),
        "__prism_patched__": True,
        "__doc__": base.__doc__,
        "__module__": base.__module__,
    }
    cls = type(base.__name__, (PrismArguments, base), namespace)
    return dataclasses.dataclass(cls)


def patch_parser(module: ModuleType) -> None:
    """Swap FinetuningArguments in the parser's argument lists for the PRISM-aware subclass, and make its
    choice of the checkpoint to resume from skip checkpoints a kill left incomplete (every stage)."""
    _require(module)
    for attr in ("_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS"):
        arg_list = getattr(module, attr)
        for i, cls in enumerate(arg_list):
            if cls.__name__ == "FinetuningArguments":
                arg_list[i] = make_finetuning_arguments(cls)
    if getattr(module.get_last_checkpoint, "__prism_original__", None) is None:
        module.get_last_checkpoint = _last_complete_checkpoint(module.get_last_checkpoint)


def _last_complete_checkpoint(original: Any) -> Any:
    def get_last_checkpoint(folder: str) -> str | None:
        """The last complete checkpoint of ``folder`` (:mod:`prism_plugin.llamafactory.checkpoints`)."""
        from llamafactory.extras import logging

        from prism_plugin.llamafactory.checkpoints import last_complete_checkpoint

        return last_complete_checkpoint(folder, logging.get_logger("llamafactory.hparams.parser").warning_rank0)

    get_last_checkpoint.__prism_original__ = original  # type: ignore[attr-defined]
    return get_last_checkpoint


# --------------------------------------------------------------------------- training entry


def arg_value(args: Any, key: str) -> Any:
    """The value of ``key`` in a LLaMA-Factory argument dict or command-line list (None when absent)."""
    if isinstance(args, dict):
        return args.get(key)
    if isinstance(args, (list, tuple)):
        for i, item in enumerate(args):
            if item == f"--{key}" and i + 1 < len(args):
                return args[i + 1]
            if isinstance(item, str) and item.startswith(f"--{key}="):
                return item.split("=", 1)[1]
    return None


def stage_of(args: Any) -> str | None:
    """The ``stage`` a LLaMA-Factory argument dict or command-line list asks for."""
    return arg_value(args, "stage")


def _wants_drift_monitor(args: Any) -> bool:
    if isinstance(args, dict):
        return bool(args.get("prism_drift_monitor"))
    return isinstance(args, (list, tuple)) and any(str(a).startswith("--prism_drift_monitor") for a in args)


def patch_tuner(module: ModuleType) -> None:
    """Route the PRISM stages to our workflows (every other stage runs LLaMA-Factory's code), and make
    ``llamafactory-cli export``'s folder readable by transformers 4.57 too (EasyR1, Stage 3)."""
    _require(module)
    _patch_export(module)
    original = module._training_function
    if getattr(original, "__prism_original__", None) is not None:
        return

    def run(config: dict[str, Any]) -> None:
        args = module.read_args(config.get("args"))
        if stage_of(args) in PRISM_STAGES:
            from prism_plugin.llamafactory.stages import run_prism_stage

            run_prism_stage({**config, "args": args})
            return
        if not _wants_drift_monitor(args):
            original(config)
            return
        from prism_plugin.llamafactory.drift import make_drift_monitor
        from prism_plugin.llamafactory.trainer_log import log_through_trainer

        monitor = make_drift_monitor(args)
        with log_through_trainer(monitor):
            original({**config, "args": args, "callbacks": [*(config.get("callbacks") or []), monitor]})

    def _training_function(config: dict[str, Any]) -> None:
        try:
            run(config)
        except Exception as exc:
            message = user_error_message(exc)
            if message is None:
                raise
            import sys

            sys.stderr.write(f"prism-plugin: error: {message}\n")
            raise SystemExit(1) from None

    _training_function.__prism_original__ = original  # type: ignore[attr-defined]
    _training_function.__doc__ = original.__doc__
    module._training_function = _training_function


UNUSED_KEYS = "Some keys are not used by the HfArgumentParser: "


def user_error_message(exc: BaseException) -> str | None:
    """One line for a user's mistake in a training run (a bad row, a misspelt key, a missing file, a key
    with a wrong value), or None for anything else (our bugs keep their traceback)."""
    from prism_plugin.data.records import DatasetRowError
    from prism_plugin.errors import UserError

    if isinstance(exc, DatasetRowError):
        return f"{exc} (set prism_skip_invalid_rows: true to skip bad rows; they are counted and listed)"
    if isinstance(exc, (UserError, FileNotFoundError)):
        return str(exc)
    if isinstance(exc, ValueError) and str(exc).startswith(UNUSED_KEYS):
        from prism_plugin.llamafactory.toolkit import unknown_keys_message

        return unknown_keys_message(str(exc)[len(UNUSED_KEYS):])
    return None


def _patch_export(module: ModuleType) -> None:
    """``export_model`` (LLaMA-Factory's merge / export), then :func:`prism_plugin.portable.make_portable` on
    its ``export_dir``: a merged LoRA policy goes on to EasyR1 (transformers 4.57) as it is."""
    original = module.export_model
    if getattr(original, "__prism_original__", None) is not None:
        return

    def export_model(args: Any = None) -> None:
        args = module.read_args(args)
        original(args)
        export_dir = arg_value(args, "export_dir")
        if export_dir:
            from prism_plugin.portable import make_portable

            make_portable(export_dir)

    export_model.__prism_original__ = original  # type: ignore[attr-defined]
    export_model.__doc__ = original.__doc__
    module.export_model = export_model


# --------------------------------------------------------------------------- chat template


PRISM_TEMPLATES = {"prism_qwen3_vl": "qwen3_vl_nothink", "prism_qwen3": "qwen3_nothink"}


def patch_template(module: ModuleType) -> None:
    """Register the PRISM chat templates: Qwen3(-VL) turns with the caption/think/answer system prompt.

    Built on the *non-thinking* Qwen3 templates: the thinking ones rewrite ``<think>`` blocks,
    which in the PRISM layout belong to the response itself.
    """
    _require(module)
    from prism_plugin.layout import SYSTEM_PROMPT

    for name, base_name in PRISM_TEMPLATES.items():
        if name in module.TEMPLATES or base_name not in module.TEMPLATES:
            continue
        base = module.TEMPLATES[base_name]
        module.TEMPLATES[name] = dataclasses.replace(base, default_system=SYSTEM_PROMPT)


# --------------------------------------------------------------------------- LlamaBoard


def patch_board(module: ModuleType) -> None:
    """Add the PRISM stages to LlamaBoard (:mod:`prism_plugin.llamafactory.board`) on a supported LLaMA-Factory
    only: the board's page is built from these internals, so an untested version keeps the stock board."""
    version = llamafactory_version()
    if version not in SUPPORTED_LLAMAFACTORY:
        raise UnsupportedLlamaFactoryError(
            f"LlamaBoard of LLaMA-Factory {version} is untested: the PRISM stages are not in the board (the "
            f"command line still has them); prism-plugin supports {supported_versions()}")
    from prism_plugin.llamafactory.board import components

    components.install(module, {name: PATCHED_SYMBOLS[name] for name in BOARD_MODULES})


# --------------------------------------------------------------------------- transformers Auto classes


def register_discriminator(module: ModuleType) -> None:
    """Register ``prism_discriminator`` with transformers' Auto classes once their module has loaded."""
    if not hasattr(module, "AutoModel"):
        raise RuntimeError(f"{module.__name__} lacks AutoModel; cannot register the PRISM discriminator")
    import prism_plugin.discriminator  # noqa: F401  (its import registers the Auto classes)
