"""Saved model folders that transformers 4.57 (EasyR1, Stage 3) and 5.x (LLaMA-Factory) read alike.

A folder written by transformers 5.x is not readable as is by 4.57 in three places:

- RoPE: 5.x writes ``rope_parameters`` (``rope_type``, ``rope_theta``, ``mrope_section`` …) and no
  ``rope_scaling`` / ``rope_theta``; 4.57 ignores ``rope_parameters`` and falls back to its defaults
  (Qwen3-VL then fails: no ``mrope_section``). :func:`portable_config` writes both forms; 5.x reads
  ``rope_scaling`` + ``rope_theta`` back into the same ``rope_parameters``, so both lines build the same
  rotary frequencies.
- renamed settings: 5.x writes the MoE configs' ``num_experts`` as ``num_local_experts``
  (:data:`RENAMED_KEYS`); 4.57 would fall back to its default expert count. Both names are written.
- ``tokenizer_class``: 5.x saves a generic ``tokenizers`` tokenizer as ``TokenizersBackend``, a class
  4.57 does not have. ``PreTrainedTokenizerFast`` is the same class in both lines (5.x aliases it to
  ``TokenizersBackend``): each loads ``tokenizer.json`` verbatim, so token ids are identical. A named class
  (``Qwen2Tokenizer``, what real Qwen checkpoints carry) is left alone: both lines read it.

:func:`make_portable` applies all three to a folder; the PRISM stages, ``make-tiny``, ``upcycle`` and the
discriminator's own ``save_pretrained`` call it, and so does ``llamafactory-cli export`` under the
start-up hook. (Fused MoE expert weights are the discriminator's own business:
:mod:`prism_plugin.discriminator.experts`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
ROPE_KEYS = ("rope_parameters", "rope_scaling")  # dicts of RoPE settings, not nested configs
# transformers 5.x's name of a setting -> 4.57's (5.x's ``attribute_map`` maps the old name back on load)
RENAMED_KEYS = {"num_local_experts": "num_experts"}
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# tokenizer classes only transformers 5.x knows -> the class both lines load the same way
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a model config as a dict; nested configs included) with RoPE in both forms and every
    renamed setting (:data:`RENAMED_KEYS`) under both names.

    Where only ``rope_parameters`` (5.x) is present, ``rope_theta`` and ``rope_scaling`` (the other
    parameters) are added; where only ``rope_theta`` (4.57) is, ``rope_parameters`` is added. A config that
    has both, or neither, is left as it is. Returns a new dict.
    """
    out = {
        key: portable_config(value) if isinstance(value, dict) and key not in ROPE_KEYS else value
        for key, value in config.items()
    }
    for new, old in RENAMED_KEYS.items():
        if new in out and old not in out:
            out[old] = out[new]
    params = out.get("rope_parameters")
    global_rope = isinstance(params, dict) and "rope_type" in params and "rope_theta" in params
    if global_rope and "rope_theta" not in out:  # 5.x's form only (one RoPE for every layer)
        out["rope_theta"] = params["rope_theta"]
        out["rope_scaling"] = {key: value for key, value in params.items() if key != "rope_theta"}
    elif params is None and out.get("rope_theta") is not None:  # 4.57's form only
        scaling = dict(out.get("rope_scaling") or {})
        scaling.setdefault("rope_type", scaling.pop("type", "default"))
        out["rope_parameters"] = scaling | {"rope_theta": out["rope_theta"]}
    return out


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: dict[str, Any]) -> None:
    # transformers' own formatting of config.json / tokenizer_config.json
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_portable_config(config_file: str | Path) -> bool:
    """Rewrite a ``config.json`` as :func:`portable_config` makes it; returns whether it changed."""
    path = Path(config_file)
    data = _read(path)
    portable = portable_config(data)
    if portable == data:
        return False
    _write(path, portable)
    return True


def set_tokenizer_class(directory: str | Path, tokenizer_class: str | None = None) -> bool:
    """Set ``tokenizer_class`` in ``directory/tokenizer_config.json``: to ``tokenizer_class`` when given, else
    to the portable name of a 5.x-only class (:data:`PORTABLE_TOKENIZER_CLASSES`). Returns whether it changed."""
    path = Path(directory) / TOKENIZER_CONFIG_FILE
    if not path.is_file():
        return False
    data = _read(path)
    current = data.get("tokenizer_class")
    wanted = tokenizer_class or PORTABLE_TOKENIZER_CLASSES.get(current, current)
    if wanted == current:
        return False
    _write(path, data | {"tokenizer_class": wanted})
    return True


def make_portable(directory: str | Path) -> list[str]:
    """Make the model folder ``directory`` load the same under transformers 4.57 and 5.x (RoPE keys in
    ``config.json``, ``tokenizer_class``); returns the names of the files it rewrote."""
    directory = Path(directory)
    changed = []
    if (directory / CONFIG_FILE).is_file() and write_portable_config(directory / CONFIG_FILE):
        changed.append(CONFIG_FILE)
    if set_tokenizer_class(directory):
        changed.append(TOKENIZER_CONFIG_FILE)
    return changed
