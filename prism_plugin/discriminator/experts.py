"""MoE expert weights in the layouts transformers uses, and the one a saved discriminator holds on disk.

With E experts, hidden size H and expert intermediate size I:

- canonical (``nn.Linear``'s out × in, transformers 5.x in memory): fused ``experts.gate_up_proj``
  (E, 2I, H) = [gate; up] and ``experts.down_proj`` (E, H, I);
- hub (Qwen3-VL-MoE checkpoints on the hub, transformers 4.57 in memory): fused (E, H, 2I) and (E, I, H);
- per expert (Qwen3-MoE on the hub, transformers 4.57 in memory): ``experts.{e}.gate_proj.weight`` (I, H),
  ``up_proj`` (I, H), ``down_proj`` (H, I).

transformers 5.x fuses per-expert checkpoints on load and splits them again on save, and transposes hub
Qwen3-VL-MoE tensors on load (where their shape differs from the model's) but saves its own (canonical)
layout, which 4.57 cannot load. :func:`write_hub_layout` turns the fused tensors of a saved discriminator
into the hub layout, which both lines load; ``PrismDiscriminator.save_pretrained`` calls it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FUSED_GATE_UP, FUSED_DOWN = "experts.gate_up_proj", "experts.down_proj"


def expert_tensors(prefix: str, gate_up: torch.Tensor, down: torch.Tensor,
                   target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state entries of the experts of the MoE block ``prefix`` from canonical ``gate_up`` (E, 2I, H) and
    ``down`` (E, H, I), in the layout ``target`` (a backbone's state dict) holds."""
    num, inter = gate_up.shape[0], gate_up.shape[1] // 2
    fused_gate_up = target.get(f"{prefix}.{FUSED_GATE_UP}")
    if fused_gate_up is None:  # one module per expert
        out = {}
        for e in range(num):
            out[f"{prefix}.experts.{e}.gate_proj.weight"] = gate_up[e, :inter].clone()
            out[f"{prefix}.experts.{e}.up_proj.weight"] = gate_up[e, inter:].clone()
            out[f"{prefix}.experts.{e}.down_proj.weight"] = down[e].clone()
        return out
    fused_down = target[f"{prefix}.{FUSED_DOWN}"]
    if fused_gate_up.shape == gate_up.shape and fused_down.shape == down.shape:  # canonical
        return {f"{prefix}.{FUSED_GATE_UP}": gate_up, f"{prefix}.{FUSED_DOWN}": down}
    hub_gate_up, hub_down = gate_up.transpose(1, 2), down.transpose(1, 2)
    if fused_gate_up.shape == hub_gate_up.shape and fused_down.shape == hub_down.shape:
        return {f"{prefix}.{FUSED_GATE_UP}": hub_gate_up.contiguous(), f"{prefix}.{FUSED_DOWN}": hub_down.contiguous()}
    raise RuntimeError(
        f"{prefix}: dense MLP gate/up {tuple(gate_up.shape[1:])}, down {tuple(down.shape[1:])} fits neither "
        f"layout of the experts {tuple(fused_gate_up.shape)}, {tuple(fused_down.shape)}"
    )


def is_canonical(gate_up: tuple[int, ...], down: tuple[int, ...], hidden: int, inter: int, prefix: str) -> bool:
    """Whether one block's fused shapes (without E) are canonical (True) or hub (False); an error otherwise."""
    canonical = gate_up == (2 * inter, hidden) and down == (hidden, inter)
    hub = gate_up == (hidden, 2 * inter) and down == (inter, hidden)
    if canonical == hub:
        raise ValueError(f"{prefix}: fused expert shapes {gate_up}, {down} match no layout of H={hidden}, I={inter}")
    return canonical


def write_hub_layout(directory: str | Path, hidden: int, inter: int) -> list[str]:
    """Rewrite the fused expert tensors of the safetensors checkpoint in ``directory`` (single file or shards)
    that are in the canonical layout into the hub layout; returns the names of the files rewritten."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = ["model.safetensors"] if (directory / "model.safetensors").is_file() else []
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in files:
        with safe_open(str(directory / name), framework="pt") as f:
            for key in f.keys():
                if key.endswith(f".{FUSED_GATE_UP}") or key.endswith(f".{FUSED_DOWN}"):
                    shapes[key] = (name, tuple(f.get_slice(key).get_shape()))
    to_flip: dict[str, list[str]] = {}
    for key, (name, shape) in sorted(shapes.items()):
        if not key.endswith(f".{FUSED_GATE_UP}"):
            continue
        prefix = key.removesuffix(f".{FUSED_GATE_UP}")
        down_name, down_shape = shapes[f"{prefix}.{FUSED_DOWN}"]
        if is_canonical(shape[1:], down_shape[1:], hidden, inter, prefix):
            to_flip.setdefault(name, []).append(key)
            to_flip.setdefault(down_name, []).append(f"{prefix}.{FUSED_DOWN}")
    for name, keys in sorted(to_flip.items()):
        path = directory / name
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        for key in keys:
            tensors[key] = tensors[key].transpose(1, 2).contiguous()
        save_file(tensors, str(path), metadata=metadata)
    return sorted(to_flip)
