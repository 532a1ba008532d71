"""Segment scores for (prompt, segment token ids) pairs, with shared-prefix reuse.

The alignment stage scores, per prompt, the caption and reasoning segments of G rollouts and of
the teacher: 2(G+1) sequences that all start with the same prompt (and image). The naive way
runs one full forward per sequence (vision tower included). With ``reuse_prefix=True`` the
prompt is encoded once — vision tower, M-RoPE positions and KV cache — and every segment is
run as a batched continuation over that cache (rows selected from it), which gives the same
scores as the full forwards (same attention inputs, same positions) at a fraction of the cost.

Positions: a continuation token ``t`` of a prompt gets ``next_pos + t`` on every M-RoPE axis,
where ``next_pos`` is the prompt's largest position + 1 (for Qwen3-VL that is the prompt length
plus the image's rope delta; for text backbones the prompt length) — exactly what the backbone's
``get_rope_index`` gives the same tokens in the full sequence. Prompts are right-padded within a
prefix batch; pad slots stay masked in the continuation's attention mask and never shift positions.

In ``dedicated`` mode the prompt is routed by the segment's expert group too (the score is
D(prompt ⊕ segment) with one routing), so the prefix is encoded once per (prompt, segment type).

:func:`score_with_aux` also returns the router load-balancing loss of an MoE model, for the
discriminator's training step: the Switch loss over every valid token the scoring ran, pooled
over all its forwards (see its docstring for how the two paths count prompt tokens).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

# Router logits of the valid tokens run so far: one list per MoE layer of (tokens, experts) blocks.
RouterLog = list[list[torch.Tensor]]


@dataclass(frozen=True)
class PromptInputs:
    """One rendered prompt: token ids (image placeholders already expanded, as the processor gives
    them) and, for VL backbones, its images' ``pixel_values`` / ``image_grid_thw``."""

    input_ids: torch.Tensor | Sequence[int]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None


@dataclass(frozen=True)
class SegmentQuery:
    """Score ``token_ids`` (a segment of a response, the policy's own ids) after prompt ``prompt``
    (an index into the prompts list) with the ``segment`` head / experts."""

    prompt: int
    segment: str
    token_ids: torch.Tensor | Sequence[int]


def _ids(x: torch.Tensor | Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.long).reshape(-1)


def pad_right(rows: list[torch.Tensor], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) ids and attention mask of variable-length id rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _images(prompts: Sequence[PromptInputs], which: Sequence[int], device: torch.device, dtype: torch.dtype):
    pixels = [prompts[i].pixel_values for i in which if prompts[i].pixel_values is not None]
    grids = [prompts[i].image_grid_thw for i in which if prompts[i].image_grid_thw is not None]
    if not pixels:
        return None, None
    return torch.cat(pixels).to(device, dtype), torch.cat(grids).to(device)


def _pad_id(model) -> int:
    pad = getattr(model.config.backbone_text_config, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def _check(prompts: Sequence[PromptInputs], queries: Sequence[SegmentQuery]) -> None:
    for n, q in enumerate(queries):
        if not 0 <= q.prompt < len(prompts):
            raise IndexError(f"query {n} names prompt {q.prompt}; there are {len(prompts)}")
        if len(_ids(q.token_ids)) == 0:
            raise ValueError(f"query {n} ({q.segment}) has no tokens; score only non-empty segments")


def score(
    model,
    prompts: Sequence[PromptInputs],
    queries: Sequence[SegmentQuery],
    *,
    reuse_prefix: bool = True,
    batch_size: int = 32,
    clip: float | None = None,
) -> torch.Tensor:
    """Scores (N,) float32 of ``queries``, in order: D(prompt ⊕ segment) read at the segment's last token.

    Runs in the model's current mode and grad state (wrap in ``torch.no_grad()`` / ``model.eval()``
    for rewards; the warm-up and alignment updates call it with gradients). ``reuse_prefix``
    encodes each prompt once and scores its segments as continuations of the cached prefix;
    ``False`` runs one full forward per query (the reference). ``batch_size`` bounds the rows of
    one forward; ``clip`` clamps the scores to ±clip. Under gradient checkpointing the prefix path
    checkpoints each batch of continuations as a whole (see :func:`_continuation`).
    """
    states, _ = segment_states(model, prompts, queries, reuse_prefix=reuse_prefix, batch_size=batch_size)
    scores = model.score_hidden(states, [q.segment for q in queries]) if queries else states.new_zeros(0)
    return scores.clamp(-clip, clip) if clip is not None else scores


def score_with_aux(
    model,
    prompts: Sequence[PromptInputs],
    queries: Sequence[SegmentQuery],
    *,
    reuse_prefix: bool = True,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unclipped :func:`score` plus the router load-balancing loss (None for a dense model), for training;
    see :func:`segment_states` for the loss."""
    states, aux = segment_states(model, prompts, queries, reuse_prefix=reuse_prefix, batch_size=batch_size,
                                 with_aux=True)
    scores = model.score_hidden(states, [q.segment for q in queries]) if queries else states.new_zeros(0)
    return scores, aux


def segment_states(
    model,
    prompts: Sequence[PromptInputs],
    queries: Sequence[SegmentQuery],
    *,
    reuse_prefix: bool = True,
    batch_size: int = 32,
    with_aux: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, H) hidden states the scores of ``queries`` are read from, and (``with_aux``, MoE models) the
    router load-balancing loss; ``model.score_hidden`` turns the states into scores.

    The loss is transformers' Switch load-balancing loss (``load_balancing_loss_func``: experts ×
    Σ fraction-of-top-k-picks × mean router probability, pooled over the MoE layers) over the router
    logits of every valid token the forwards ran, pooled across forwards, pads excluded. With
    ``reuse_prefix=False`` that is the loss of one padded forward over all the (prompt ⊕ segment)
    rows, each prompt token counted once per row. With the prefix path it counts each prompt token
    once per (prompt, routing) encoding plus every segment token — a different value, and the more
    faithful load-balancing signal: it measures the routing of the tokens the experts actually
    process, instead of weighting prompts (and their image tokens) by how many segments follow them.
    """
    _check(prompts, queries)
    log = [] if with_aux and model.config.is_moe else None
    if not queries:
        return torch.zeros(0, model.config.backbone_hidden_size), None
    run = _states_with_prefix if reuse_prefix else _states_full
    states = run(model, prompts, queries, batch_size, log)
    return states, _aux_loss(model, log)


def _log_router(log: RouterLog | None, logits: Sequence[torch.Tensor], mask: torch.Tensor) -> None:
    """Append each layer's router logits of the valid (``mask``) tokens of a (B, L) forward to ``log``."""
    if log is None or not logits:
        return
    if not log:
        log.extend([] for _ in logits)
    if len(log) != len(logits):
        raise RuntimeError(f"router logits of {len(logits)} layers; earlier forwards had {len(log)}")
    valid = mask.bool().reshape(-1)
    for layer, layer_logits in zip(log, logits, strict=True):
        layer.append(layer_logits[valid.to(layer_logits.device)])


def _aux_loss(model, log: RouterLog | None) -> torch.Tensor | None:
    """Switch load-balancing loss over every logged token (all layers pooled); None when nothing was logged."""
    if not log:
        return None
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    logits = tuple(torch.cat(layer) for layer in log)
    top_k = int(model.config.backbone_text_config.num_experts_per_tok)
    return load_balancing_loss_func(logits, model.config.num_experts, top_k)


def _states_full(model, prompts, queries, batch_size: int, log: RouterLog | None = None) -> torch.Tensor:
    """Reference: one full forward (prompt ⊕ segment, images included) per query, batched."""
    device, dtype = model.device, model.dtype
    out = []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        rows = [torch.cat([_ids(prompts[q.prompt].input_ids), _ids(q.token_ids)]) for q in chunk]
        ids, mask = pad_right(rows, _pad_id(model), device)
        pixel_values, grid = _images(prompts, [q.prompt for q in chunk], device, dtype)
        result = model(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            segments=[q.segment for q in chunk],
            output_router_logits=log is not None,
        )
        _log_router(log, result.router_logits or (), mask)
        out.append(result.last_token_state)
    return torch.cat(out)


def _route_key(model, segment: str) -> str | None:
    """Queries with the same key can share a prefix encoding (same routing of the prompt)."""
    return segment if model.config.expert_mode == "dedicated" and model.config.is_moe else None


def select_cache(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding batch rows ``rows`` of ``cache`` (autograd-connected, ``cache`` unchanged)."""
    layers = [(layer.keys.index_select(0, rows), layer.values.index_select(0, rows)) for layer in cache.layers]
    return DynamicCache(ddp_cache_data=layers)


def _checkpointing(model) -> bool:
    return model.training and getattr(model, "is_gradient_checkpointing", False)


@contextlib.contextmanager
def _layers_keep_cache(model) -> Iterator[None]:
    """Let transformers' checkpointed layers keep the KV cache for one call (they drop it when checkpointing)."""
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for layer in layers:
        layer.gradient_checkpointing = False
    try:
        yield
    finally:
        for layer in layers:
            layer.gradient_checkpointing = True


def _continuation(model, ids, attention_mask, positions, cache: DynamicCache, segments: list[str],
                  with_router: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Last-token states (and router logits) of segments continuing a cached prefix. Under gradient checkpointing
    the whole continuation is one checkpointed call, recomputed in the backward pass from the prefix cache (the
    layers' own checkpointing would drop that cache), so the prefix path and its memory saving both hold."""
    cached = [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]

    def run(*kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pairs = [(kv[i], kv[i + 1]) for i in range(0, len(kv), 2)]
        with _layers_keep_cache(model):
            result = model(input_ids=ids, attention_mask=attention_mask, position_ids=positions,
                           past_key_values=DynamicCache(ddp_cache_data=pairs), segments=segments, use_cache=True,
                           output_router_logits=with_router)
        return (result.last_token_state, *(result.router_logits or ()))

    if _checkpointing(model):
        out = torch.utils.checkpoint.checkpoint(run, *cached, use_reentrant=False)
    else:
        out = run(*cached)
    return out[0], tuple(out[1:])


def _states_with_prefix(model, prompts, queries, batch_size: int, log: RouterLog | None = None) -> torch.Tensor:
    """Encode each (prompt, routing) prefix once, then score its segments as cached continuations."""
    device, dtype = model.device, model.dtype
    pad_id = _pad_id(model)
    # One prefix row per (prompt, routing key), in first-use order; row_of[n]: query n's prefix row.
    prefix_rows: dict[tuple[int, str | None], int] = {}
    row_of = [prefix_rows.setdefault((q.prompt, _route_key(model, q.segment)), len(prefix_rows)) for q in queries]
    route_segment = {}
    for n, row in enumerate(row_of):
        route_segment.setdefault(row, queries[n].segment)
    keys = list(prefix_rows)
    states = None
    for start in range(0, len(keys), batch_size):
        block = keys[start : start + batch_size]
        ids, mask = pad_right([_ids(prompts[p].input_ids) for p, _ in block], pad_id, device)
        pixel_values, grid = _images(prompts, [p for p, _ in block], device, dtype)
        positions, next_pos = model.position_ids(ids, mask, grid)
        with _layers_keep_cache(model):
            prefix, prefix_logits = model.encode(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                pixel_values=pixel_values,
                image_grid_thw=grid,
                segments=[route_segment[start + i] for i in range(len(block))],
                use_cache=True,
            )
        _log_router(log, prefix_logits, mask)
        members = [n for n, row in enumerate(row_of) if start <= row < start + len(block)]
        for c_start in range(0, len(members), batch_size):
            chunk = members[c_start : c_start + batch_size]
            local = torch.tensor([row_of[n] - start for n in chunk], device=device)
            cont, cont_mask = pad_right([_ids(queries[n].token_ids) for n in chunk], pad_id, device)
            pos = next_pos.index_select(0, local)[:, None] + torch.arange(cont.shape[1], device=device)
            if model.config.is_vision:
                pos = pos.unsqueeze(0).expand(3, -1, -1)
            cache = select_cache(prefix.past_key_values, local)
            block_states, router_logits = _continuation(
                model, cont, torch.cat([mask.index_select(0, local), cont_mask], dim=1), pos, cache,
                [queries[n].segment for n in chunk], log is not None,
            )
            _log_router(log, router_logits, cont_mask)
            if states is None:
                states = block_states.new_zeros(len(queries), block_states.shape[-1])
            states = states.index_copy(0, torch.tensor(chunk, device=device), block_states)
    return states
