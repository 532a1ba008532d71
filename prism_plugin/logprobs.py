"""Per-token log-probabilities of completions under a causal LM, without the (rows × length × vocab) logits.

The policy loss needs ``log p(token)`` at every completion position. Taking the model's logits for all of
them holds rows × length × vocab floats several times over (the logits, their fp32 copy, the softmax): for 8
rollouts × 6,144 tokens × a 151,936-token vocabulary that is ~28 GiB per copy. :func:`completion_log_probs`
instead asks the model for its final hidden states and applies the output layer ``chunk_tokens`` positions
at a time, each chunk under activation checkpointing, so forward and backward hold one chunk's logits. The
result equals the full computation up to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def completion_log_probs(
    model: torch.nn.Module,
    output_layer: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_starts: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    **model_inputs: Any,
) -> torch.Tensor:
    """``(rows, completion_len)`` log-probabilities of the ``completion_len`` tokens of each row that start at
    column ``completion_starts[row]`` (rows right-padded, so prompts of different lengths share one
    forward), from logits divided by ``temperature`` (the sampling distribution). ``output_layer`` is the
    model's (``get_output_embeddings()``), applied to the final hidden states ``chunk_tokens`` positions at
    a time (in one piece when the completion is no longer); ``chunk_tokens=None`` takes the model's own
    logits instead."""
    # position p predicts token p + 1: the completion's tokens are predicted from the columns before them
    columns = completion_starts.to(input_ids.device)[:, None] + torch.arange(completion_len, device=input_ids.device)
    targets = input_ids.gather(1, columns)
    if chunk_tokens is None:  # the model's own logits (all positions), whatever its head does
        first = int(completion_starts.min()) - 1  # the first column any completion is predicted from
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=input_ids.shape[1] - first,
                       use_cache=False, **model_inputs).logits
        at = (columns - 1 - first)[..., None].expand(-1, -1, logits.shape[-1])
        return _token_log_probs(logits.gather(1, at), targets, temperature)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, output_hidden_states=True,
                use_cache=False, **model_inputs)
    final = out.hidden_states[-1]
    _check_final_hidden_states(output_layer, final[:, -1:], out.logits)
    hidden = final.gather(1, (columns - 1)[..., None].expand(-1, -1, final.shape[-1]))
    if completion_len <= chunk_tokens:
        return _chunk_log_probs(hidden, targets, output_layer, temperature)
    pieces = []
    for start in range(0, completion_len, chunk_tokens):
        stop = min(start + chunk_tokens, completion_len)
        pieces.append(checkpoint(_chunk_log_probs, hidden[:, start:stop], targets[:, start:stop], output_layer,
                                 temperature, use_reentrant=False))
    return torch.cat(pieces, dim=1)


def _chunk_log_probs(hidden: torch.Tensor, targets: torch.Tensor, output_layer: torch.nn.Module,
                     temperature: float) -> torch.Tensor:
    return _token_log_probs(output_layer(hidden), targets, temperature)


def _token_log_probs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)


def _check_final_hidden_states(output_layer: torch.nn.Module, last_hidden: torch.Tensor,
                               last_logits: torch.Tensor) -> None:
    """The chunked path assumes ``output_layer(hidden_states[-1])`` are the model's logits (true of Qwen3 /
    Qwen3-VL: no logit scaling or soft-capping after the head); the model's own last-position logits, which
    the forward returns anyway, check it on every call."""
    with torch.no_grad():
        mine = output_layer(last_hidden).float()
        theirs = last_logits.float()
        scale = theirs.abs().max().clamp_min(1.0)
        if not torch.allclose(mine, theirs, rtol=0.0, atol=float(scale) * 2e-2):
            raise RuntimeError(
                "prism_logprob_chunk_size: this model's logits are not its output layer applied to its last "
                "hidden states (logit scaling or soft-capping?); set prism_logprob_chunk_size: null"
            )
