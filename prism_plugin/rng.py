"""The random stream rollouts are sampled from: one per rank, seeded from the run's seed and the rank, saved
with each checkpoint.

Every rank of a run starts from the same global seed (the Trainer's ``seed``), so a sampler that draws from
torch's global generator samples the same tokens on every rank: the G copies of a prompt spread over the
ranks (``prism_groups_across_ranks``) would hold duplicates. trl seeds each device apart for the same reason.
A :class:`SamplingStream` keeps its own generator states, apart from the global ones: sampling neither
depends on nor disturbs what the rest of the step draws (dropout, data order), and the stream resumes exactly
from a checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import torch


def stream_seed(seed: int, rank: int) -> int:
    """A 63-bit seed for ``rank``'s stream of a run seeded ``seed`` (distinct per rank, the same on every run)."""
    digest = hashlib.sha256(f"prism-sampling/{seed}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class SamplingStream:
    """Generator states (CPU, and the accelerator's where sampling runs there) that only sampling draws from.

    ``active(device)`` makes them torch's global generators for the duration of a ``with`` block and keeps
    what was drawn; engines that take explicit seeds (vLLM) draw them with :meth:`next_seed`.
    """

    def __init__(self, seed: int, rank: int = 0) -> None:
        self.seed, self.rank = seed, rank
        self._base = stream_seed(seed, rank)
        self._cpu = torch.Generator().manual_seed(self._base).get_state()
        self._device: dict[str, torch.Tensor] = {}  # device type -> generator state, made on first use

    @contextlib.contextmanager
    def active(self, device: torch.device | str | None = None) -> Iterator[None]:
        """Sample inside this block from the stream; the global generators are as before afterwards."""
        device = torch.device(device if device is not None else "cpu")
        accelerator = getattr(torch, device.type, None) if device.type not in ("cpu", "meta") else None
        devices = [device.index if device.index is not None else accelerator.current_device()] if accelerator else []
        with torch.random.fork_rng(devices=devices, device_type=device.type if accelerator else "cuda"):
            torch.random.set_rng_state(self._cpu)
            if accelerator is not None:
                if device.type not in self._device:
                    generator = torch.Generator(device=device).manual_seed(self._base)
                    self._device[device.type] = generator.get_state()
                accelerator.set_rng_state(self._device[device.type], devices[0])
            try:
                yield
            finally:
                self._cpu = torch.random.get_rng_state()
                if accelerator is not None:
                    self._device[device.type] = accelerator.get_rng_state(devices[0])

    def next_seed(self) -> int:
        """A seed for one request of an engine that seeds requests itself, drawn from the stream."""
        with self.active():
            return int(torch.randint(0, 2**31 - 1, (1,)).item())

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "rank": self.rank, "cpu": self._cpu.clone(),
                "device": {key: value.clone() for key, value in self._device.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.rank = state["seed"], state["rank"]
        self._base = stream_seed(self.seed, self.rank)
        self._cpu = state["cpu"].clone()
        self._device = {key: value.clone() for key, value in state["device"].items()}
