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
    completion_len: int,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    **model_inputs: Any,
) -> torch.Tensor:
    """``(rows, completion_len)`` log-probabilities of the last ``completion_len`` tokens of ``input_ids``,
    from logits divided by ``temperature`` (the sampling distribution). ``output_layer`` is the model's
    (``get_output_embeddings()``); ``chunk_tokens=None`` takes the model's logits in one piece."""
    targets = input_ids[:, -completion_len:]
    if chunk_tokens is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=completion_len + 1,
                    use_cache=False, **model_inputs)
        return _token_log_probs(out.logits[:, :-1, :], targets, temperature)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, output_hidden_states=True,
                use_cache=False, **model_inputs)
    final = out.hidden_states[-1]
    _check_final_hidden_states(output_layer, final[:, -1:], out.logits)
    hidden = final[:, -(completion_len + 1):-1]  # the positions that predict the completion tokens
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
