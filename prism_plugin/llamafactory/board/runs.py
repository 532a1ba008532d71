"""What LlamaBoard needs to run a PRISM stage, without the page: its stages, the ``prism_*`` keys of the board's
fields, the checks a Start runs, the datasets a stage lists, the curves of a live run and what an Abort left.

:mod:`prism_plugin.llamafactory.board` puts these into the board's components and runner.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from prism_plugin.data.dataset_info import KIND_KEY, STAGE_KINDS
from prism_plugin.errors import ConfigError

STAGE_LABELS = {"PRISM discriminator warm-up": "prism_disc", "PRISM alignment": "prism_align"}
ALIGN_FIELDS = ("prism_discriminator", "prism_reward", "prism_policy_loss", "prism_num_generations",
                "prism_max_new_tokens", "prism_temperature", "prism_disc_learning_rate")
KIND_WORDS = {"pairs": "warm-up pair", "align": "alignment", "rlvr": "RLVR"}
# stock arguments the board always sets that mean nothing to a PRISM stage (a token count of rollout batches
# warns on every step)
DROPPED_ARGS = ("include_num_input_tokens_seen",)
CURVES = {  # panel title -> trainer-log keys drawn in it, for the stage's curves beside the loss
    "prism_align": {
        "score gap (teacher − policy)": ("caption/score_gap", "reasoning/score_gap", "response/score_gap"),
        "discriminator": ("disc/accuracy", "disc/loss"),
        "rollouts": ("valid_ratio", "truncated_ratio", "reward"),
    },
    "prism_disc": {"pair accuracy": ("accuracy", "caption/accuracy", "reasoning/accuracy", "eval_accuracy")},
}


def field_defaults() -> dict[str, Any]:
    """The defaults of the fields the board shows, from the keys' own dataclasses (their one home)."""
    from prism_plugin.arguments import PrismArguments

    defaults = {f.name: f.default for f in dataclasses.fields(PrismArguments)}
    return {name: defaults[name] for name in ALIGN_FIELDS}


def is_prism(stage: str | None) -> bool:
    return stage in STAGE_LABELS.values()


def add_prism_args(args: dict[str, Any], fields: dict[str, Any], extra_args: dict[str, Any]) -> dict[str, Any]:
    """The board's argument dict for a PRISM stage: the stage's fields as ``prism_*`` keys (alignment only), then
    the extra arguments again (they win over fields, as over the board's others)."""
    for key in DROPPED_ARGS:
        args.pop(key, None)
    if args["stage"] == "prism_align":
        rate = str(fields["prism_disc_learning_rate"]).strip()
        try:
            learning_rate = float(rate)
        except ValueError:
            raise ConfigError(f"the discriminator learning rate must be a number; got {rate!r}") from None
        args.update(
            prism_discriminator=(fields["prism_discriminator"] or "").strip() or None,
            prism_reward=fields["prism_reward"],
            prism_policy_loss=fields["prism_policy_loss"],
            prism_num_generations=int(fields["prism_num_generations"]),
            prism_max_new_tokens=int(fields["prism_max_new_tokens"]),
            prism_temperature=float(fields["prism_temperature"]),
            prism_disc_learning_rate=learning_rate,
        )
    args.update(extra_args)
    return args


def check_args(args: dict[str, Any], dataset_info: dict[str, Any], alerts: dict[str, str]) -> str | None:
    """The one-line problem with a PRISM stage's arguments (None: none found): the ``prism_*`` keys as the run's
    parser validates them, the model and discriminator folders, and the kind of each dataset. ``alerts`` holds
    the board's messages in the page's language."""
    from prism_plugin.arguments import PrismArguments
    from prism_plugin.discriminator.loading import discriminator_kind

    stage = args["stage"]
    prism = {key: value for key, value in args.items() if key.startswith("prism_")}
    known = {f.name for f in dataclasses.fields(PrismArguments)}
    unknown = sorted(set(prism) - known)
    if unknown:
        from prism_plugin.llamafactory.toolkit import unknown_keys_message

        return unknown_keys_message(repr(unknown))
    try:
        PrismArguments(**prism)
    except (ConfigError, ValueError, TypeError) as exc:
        return str(exc)
    model = str(args.get("model_name_or_path") or "")
    if stage == "prism_disc":
        if args.get("finetuning_type") != "full":
            return alerts["err_prism_disc_full"]
        problem = _folder_problem(discriminator_kind, model)
        if problem:
            return f"model path: {problem}"
    else:
        if prism.get("prism_reward", "discriminator") == "discriminator":
            if not prism.get("prism_discriminator"):
                return alerts["err_prism_no_discriminator"]
            problem = _folder_problem(discriminator_kind, prism["prism_discriminator"])
            if problem:
                return problem
        if model and _folder_problem(discriminator_kind, model) is None:
            return alerts["err_prism_policy_is_discriminator"].format(path=model)
    return _dataset_problem(stage, str(args.get("dataset") or ""), dataset_info, alerts)


def _folder_problem(check: Any, path: str) -> str | None:
    from prism_plugin.errors import UserError

    try:
        check(path)
    except (FileNotFoundError, UserError, ValueError, OSError) as exc:
        return " ".join(str(exc).split())
    return None


def _dataset_problem(stage: str, datasets: str, dataset_info: dict[str, Any], alerts: dict[str, str]) -> str | None:
    wanted = STAGE_KINDS[stage]
    for name in filter(None, (n.strip() for n in datasets.split(","))):
        kind = (dataset_info.get(name) or {}).get(KIND_KEY)
        if kind is not None and kind not in wanted:
            return alerts["err_prism_dataset_kind"].format(
                name=name, kind=KIND_WORDS.get(kind, kind), stage=stage,
                wanted=" or ".join(KIND_WORDS[k] + " rows" for k in wanted))
    return None


def datasets_of_stage(dataset_info: dict[str, Any], stage: str) -> list[str]:
    """The ``dataset_info.json`` entries a PRISM stage reads (by their ``prism_kind``)."""
    return [name for name, entry in dataset_info.items()
            if isinstance(entry, dict) and entry.get(KIND_KEY) in STAGE_KINDS[stage]]


def prism_datasets(dataset_info: dict[str, Any]) -> set[str]:
    """The entries of any PRISM kind (not listed for LLaMA-Factory's own stages, which cannot read them)."""
    return {name for name, entry in dataset_info.items() if isinstance(entry, dict) and KIND_KEY in entry}


def find_discriminators(save_dir: str | os.PathLike) -> list[str]:
    """Discriminator folders among the board's saved runs (``save_dir/MODEL/METHOD/RUN``), newest first."""
    from prism_plugin.discriminator.loading import discriminator_kind

    found = []
    for config in Path(save_dir).glob("*/*/*/config.json"):
        if _folder_problem(discriminator_kind, str(config.parent)) is None:
            found.append(config.parent)
    return [str(folder) for folder in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def run_stage(output_path: str | os.PathLike) -> str | None:
    """The stage of the board's run in ``output_path`` (from its ``training_args.yaml``)."""
    import yaml

    path = Path(output_path) / "training_args.yaml"
    try:
        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stage")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def read_trainer_log(output_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of ``trainer_log.jsonl`` (a line being written is left out)."""
    path = Path(output_path) / "trainer_log.jsonl"
    entries = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


def curves_figure(trainer_log: list[dict[str, Any]], stage: str) -> Any:
    """The loss and the stage's PRISM curves, one panel each, from the trainer log (matplotlib figure)."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    panels = [("loss", ("loss",))] + [(title, keys) for title, keys in CURVES[stage].items()
                                      if any(key in entry for entry in trainer_log for key in keys)]
    plt.close("all")
    fig, axes = plt.subplots(len(panels), 1, figsize=(5, 2.1 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], panels, strict=True):
        for key in keys:
            points = [(e["current_steps"], e[key]) for e in trainer_log if e.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("step", fontsize=8)
    fig.tight_layout()
    return fig


def abort_note(output_path: str | os.PathLike, template: str) -> str | None:
    """What an aborted run left in ``output_path`` (``template``: the board's message with ``{folder}`` and
    ``{checkpoint}``); None when the run had finished before the Abort took effect."""
    from prism_plugin.llamafactory.checkpoints import COMPLETE_MARKER, last_complete_checkpoint

    if (Path(output_path) / COMPLETE_MARKER).is_file():
        return None
    checkpoint = last_complete_checkpoint(output_path)
    return template.format(folder=output_path, checkpoint=Path(checkpoint).name if checkpoint else "none yet")
