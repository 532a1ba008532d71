"""The PRISM stages in LlamaBoard (``llamafactory-cli webui``): stage choices, their settings, their datasets,
checks, live curves and an honest Abort, added to the stock board as it loads.

The board has no extension point for this — ``create_train_tab`` wires its buttons to a fixed set of inputs
and the runner maps a fixed list of fields to arguments — so :func:`install` patches the symbols listed in
:data:`prism_plugin.llamafactory.patches.PATCHED_SYMBOLS` under ``llamafactory.webui.*`` (and the board's
stage table), all at once when ``llamafactory.webui.interface`` loads, after checking every one is there:

- ``TRAINING_STAGES`` gains *PRISM discriminator warm-up* and *PRISM alignment*;
- ``create_train_tab`` gets a *PRISM configurations* accordion below the stage row (shown for the PRISM
  stages), built like the board's own components (labels from ``LOCALES`` in every language) and joined to
  the inputs of Preview command / Start / Save / Load by widening ``Manager.get_base_elems`` while the tab
  is built;
- ``Runner._parse_train_args`` adds the ``prism_*`` keys (the command previewed is the command run: both come
  from this dict; Start runs it through the board's own runner, ``llamafactory-cli train`` in a subprocess);
- ``Runner._initialize`` checks a PRISM stage's settings and returns the board's one-line warning;
- ``Runner.monitor`` says, after an Abort, what the output folder holds;
- ``list_datasets`` lists a PRISM stage's datasets by their ``prism_kind`` and hides them from the others;
- ``get_trainer_info`` draws the PRISM curves beside the loss, from the run's ``trainer_log.jsonl`` (whose
  PRISM lines hold every metric: :mod:`prism_plugin.llamafactory.log_callback`).
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

from prism_plugin.llamafactory.board import runs as board_runs
from prism_plugin.llamafactory.board import text as board_text

PRISM_ELEMS = ("prism_discriminator", "prism_reward", "prism_policy_loss", "prism_num_generations",
               "prism_max_new_tokens", "prism_temperature", "prism_disc_learning_rate")


def _modules() -> dict[str, ModuleType]:
    import importlib

    names = ("llamafactory.extras.constants", "llamafactory.webui.common", "llamafactory.webui.locales",
             "llamafactory.webui.control", "llamafactory.webui.runner", "llamafactory.webui.manager",
             "llamafactory.webui.components.train", "llamafactory.webui.components.eval")
    return {name: importlib.import_module(name) for name in names}


def install(interface: ModuleType, symbols: dict[str, tuple[str, ...]]) -> None:
    """Patch the board (``interface`` is ``llamafactory.webui.interface``, just loaded); ``symbols`` lists what
    is touched per module. Nothing is patched unless every symbol is there."""
    from prism_plugin.llamafactory.toolkit import (
        UnsupportedLlamaFactoryError,
        llamafactory_version,
        supported_versions,
    )

    modules = {**_modules(), interface.__name__: interface}
    missing = [f"{module}.{path}" for module, paths in symbols.items() for path in paths
               if _lookup(modules.get(module), path) is None]
    if missing:
        raise UnsupportedLlamaFactoryError(
            f"LlamaBoard of LLaMA-Factory {llamafactory_version()} lacks {', '.join(missing)}; the PRISM stages "
            f"are not in the board; prism-plugin supports {supported_versions()}")
    if getattr(interface.create_train_tab, "__prism_original__", None) is not None:
        return
    constants, locales = modules["llamafactory.extras.constants"], modules["llamafactory.webui.locales"]
    control, runner = modules["llamafactory.webui.control"], modules["llamafactory.webui.runner"]
    train, evaluate = modules["llamafactory.webui.components.train"], modules["llamafactory.webui.components.eval"]

    constants.TRAINING_STAGES.update(board_runs.STAGE_LABELS)
    locales.LOCALES.update(board_text.locales())
    locales.ALERTS.update(board_text.alerts())
    listing = _wrap(control.list_datasets, _list_datasets(control.list_datasets, modules))
    for module in (control, train, evaluate):
        module.list_datasets = listing
    info = _wrap(control.get_trainer_info, _trainer_info(control.get_trainer_info))
    control.get_trainer_info = runner.get_trainer_info = info
    cls = runner.Runner
    cls._parse_train_args = _wrap(cls._parse_train_args, _parse_train_args(cls._parse_train_args, modules))
    cls._initialize = _wrap(cls._initialize, _initialize(cls._initialize, modules))
    cls.monitor = _wrap(cls.monitor, _monitor(cls.monitor, modules))
    interface.create_train_tab = _wrap(interface.create_train_tab, _train_tab(interface.create_train_tab, modules))


def _lookup(module: ModuleType | None, path: str) -> Any:
    target: Any = module
    for part in path.split("."):
        target = getattr(target, part, None)
    return target


def _wrap(original: Any, replacement: Any) -> Any:
    replacement.__prism_original__ = original
    replacement.__doc__ = original.__doc__
    replacement.__name__ = getattr(original, "__name__", replacement.__name__)
    return replacement


def _stage(modules: dict[str, ModuleType], label: str | None) -> str | None:
    return modules["llamafactory.extras.constants"].TRAINING_STAGES.get(label or "")


# --------------------------------------------------------------------------- the Train tab


def _train_tab(original: Any, modules: dict[str, ModuleType]) -> Any:
    def create_train_tab(engine: Any) -> dict[str, Any]:
        import gradio as gr

        elems = _prism_box()  # created first, moved below the stage row once the tab exists
        inputs = {elems[name] for name in PRISM_ELEMS}
        manager = engine.manager
        base = manager.get_base_elems
        manager.get_base_elems = lambda: base() | inputs  # the tab's buttons take these as inputs too
        try:
            tab = original(engine)
        finally:
            del manager.get_base_elems
        _place_after(elems["prism_tab"], tab["training_stage"])
        save_dir = modules["llamafactory.webui.common"].DEFAULT_SAVE_DIR
        tab["training_stage"].change(
            lambda label: _visibility(gr, _stage(modules, label)), [tab["training_stage"]],
            [elems["prism_tab"], elems["prism_align_box"], elems["prism_disc_note"]], queue=False)
        elems["prism_discriminator"].focus(
            lambda: gr.Dropdown(choices=board_runs.find_discriminators(save_dir)), None,
            [elems["prism_discriminator"]], queue=False)
        return {**tab, **elems}

    return create_train_tab


def _prism_box() -> dict[str, Any]:
    """The PRISM accordion, built like the board's own rows (labels come from ``LOCALES``)."""
    import gradio as gr

    from prism_plugin.losses import policy_loss_names

    defaults = board_runs.field_defaults()
    with gr.Accordion(open=True, visible=False) as prism_tab:
        with gr.Column(visible=False) as prism_align_box:
            with gr.Row():
                prism_discriminator = gr.Dropdown(allow_custom_value=True, value=None, scale=3)
                prism_reward = gr.Dropdown(choices=["discriminator", "verifiable"], value=defaults["prism_reward"],
                                           allow_custom_value=True, scale=1)
                prism_policy_loss = gr.Dropdown(choices=policy_loss_names(), value=defaults["prism_policy_loss"],
                                                allow_custom_value=True, scale=1)
            with gr.Row():
                prism_num_generations = gr.Slider(minimum=1, maximum=64, step=1,
                                                  value=defaults["prism_num_generations"])
                prism_max_new_tokens = gr.Slider(minimum=1, maximum=32768, step=1,
                                                 value=defaults["prism_max_new_tokens"])
                prism_temperature = gr.Slider(minimum=0.01, maximum=2.0, step=0.01,
                                              value=defaults["prism_temperature"])
                prism_disc_learning_rate = gr.Textbox(value=f"{defaults['prism_disc_learning_rate']:g}")
            prism_align_note = gr.Markdown()
        prism_disc_note = gr.Markdown(visible=False)
    return dict(prism_tab=prism_tab, prism_align_box=prism_align_box, prism_discriminator=prism_discriminator,
                prism_reward=prism_reward, prism_policy_loss=prism_policy_loss,
                prism_num_generations=prism_num_generations, prism_max_new_tokens=prism_max_new_tokens,
                prism_temperature=prism_temperature, prism_disc_learning_rate=prism_disc_learning_rate,
                prism_align_note=prism_align_note, prism_disc_note=prism_disc_note)


def _place_after(block: Any, inner: Any) -> None:
    """Move ``block`` right after the row holding ``inner`` (its ancestor among ``block``'s siblings), before the
    page is built."""
    siblings = block.parent.children
    anchor = inner
    while anchor.parent is not block.parent:
        anchor = anchor.parent
    siblings.remove(block)
    siblings.insert(siblings.index(anchor) + 1, block)


def _visibility(gr: Any, stage: str | None) -> tuple[Any, Any, Any]:
    return (gr.Accordion(visible=board_runs.is_prism(stage)), gr.Column(visible=stage == "prism_align"),
            gr.Markdown(visible=stage == "prism_disc"))


# --------------------------------------------------------------------------- datasets and curves


def _list_datasets(original: Any, modules: dict[str, ModuleType]) -> Any:
    def list_datasets(dataset_dir: str | None = None, training_stage: str | None = None) -> Any:
        import gradio as gr

        common = modules["llamafactory.webui.common"]
        info = common.load_dataset_info(dataset_dir if dataset_dir is not None else common.DEFAULT_DATA_DIR)
        stage = _stage(modules, training_stage)
        if board_runs.is_prism(stage):
            return gr.Dropdown(choices=board_runs.datasets_of_stage(info, stage))
        stock = original(dataset_dir) if training_stage is None else original(dataset_dir, training_stage)
        hidden = board_runs.prism_datasets(info)
        choices = [c for c in stock.choices if (c[1] if isinstance(c, tuple) else c) not in hidden]
        return gr.Dropdown(choices=choices)

    return list_datasets


def _trainer_info(original: Any) -> Any:
    def get_trainer_info(lang: str, output_path: Any, do_train: bool) -> Any:
        running_log, progress, info = original(lang, output_path, do_train)
        stage = board_runs.run_stage(output_path) if do_train else None
        if board_runs.is_prism(stage) and "loss_viewer" in info:
            import gradio as gr

            info["loss_viewer"] = gr.Plot(board_runs.curves_figure(board_runs.read_trainer_log(output_path), stage))
        return running_log, progress, info

    return get_trainer_info


# --------------------------------------------------------------------------- the runner


def _fields(runner: Any, data: dict[Any, Any]) -> dict[str, Any]:
    return {name: data[runner.manager.get_elem_by_id(f"train.{name}")] for name in PRISM_ELEMS}


def _parse_train_args(original: Any, modules: dict[str, ModuleType]) -> Any:
    def parse_train_args(self: Any, data: dict[Any, Any]) -> dict[str, Any]:
        args = original(self, data)
        if not board_runs.is_prism(args.get("stage")):
            return args
        extra = json.loads(data[self.manager.get_elem_by_id("train.extra_args")])
        return board_runs.add_prism_args(args, _fields(self, data), extra)

    return parse_train_args


def _initialize(original: Any, modules: dict[str, ModuleType]) -> Any:
    def initialize(self: Any, data: dict[Any, Any], do_train: bool, from_preview: bool) -> str:
        error = original(self, data, do_train, from_preview)
        if error or not do_train:
            return error
        get = lambda elem_id: data[self.manager.get_elem_by_id(elem_id)]  # noqa: E731  (the board's idiom)
        if not board_runs.is_prism(_stage(modules, get("train.training_stage"))):
            return error
        lang = get("top.lang") or "en"
        alerts = {key: modules["llamafactory.webui.locales"].ALERTS[key][lang] for key in board_text.alerts()}
        common = modules["llamafactory.webui.common"]
        try:
            args = self._parse_train_args(data)
        except (ValueError, TypeError) as exc:
            return " ".join(str(exc).split())
        return board_runs.check_args(args, common.load_dataset_info(get("train.dataset_dir")), alerts) or ""

    return initialize


def _monitor(original: Any, modules: dict[str, ModuleType]) -> Any:
    def monitor(self: Any) -> Any:
        get = lambda elem_id: self.running_data[self.manager.get_elem_by_id(elem_id)]  # noqa: E731
        stage = _stage(modules, get("train.training_stage")) if self.do_train else None
        if not board_runs.is_prism(stage):
            yield from original(self)
            return
        common = modules["llamafactory.webui.common"]
        output_path = common.get_save_dir(get("top.model_name"), get("top.finetuning_type"), get("train.output_dir"))
        lang = get("top.lang") or "en"
        output_box = self.manager.get_elem_by_id("train.output_box")
        alerts = modules["llamafactory.webui.locales"].ALERTS
        aborted = False
        for update in original(self):
            aborted = aborted or self.aborted
            if aborted and not self.running and output_box in update:  # the last update, after the run ended
                note = board_runs.abort_note(output_path, alerts["info_prism_aborted"][lang])
                if note is not None:  # instead of the board's "Finished."
                    text = str(update[output_box]).removeprefix(alerts["info_finished"][lang]).lstrip()
                    update[output_box] = note + "\n\n" + text
            yield update

    return monitor
