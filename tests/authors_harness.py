"""Run the PRISM authors' own advantage and discriminator-loss functions on given scores (tests only).

Their functions are imported at run time from a checkout of their repository (github XIAO4579/PRISM); none
of their code is in this repository. Run as a subprocess of ``tests/test_authors_parity.py``:

    PRISM_AUTHORS_SRC=/path/to/PRISM  <python with torch, numpy, tensordict, ray, omegaconf, codetiming and a
        transformers 4.x>  tests/authors_harness.py  < spec.json  > result.json

spec.json:
  {"loss_cases": [{"name": str,
                   "teacher_caption": [float], "teacher_cot": [float],     # the four score tensors, one row each
                   "student_caption": [float], "student_cot": [float],
                   "valid": [bool],                                        # layout validity of each student rollout
                   "score_clip": 10.0 | null, "score_reg_coef": 0.001,
                   "dtype": "float64" | "float32"}],
   "advantage_cases": [{"name": str, "uid": [str], "caption_scores": [float], "cot_scores": [float],
                        "format_scores": [0|1], "caption_weight": 0.5, "cot_weight": 0.5,
                        "format_penalty": 1.5, "epsilon": 1e-6 (optional: their default is used if absent)}]}

What runs:
  * loss: their DataParallelPPOCritic.update_critic (use_mm_gad=True, no remove-padding, one mini-batch = one
    micro-batch = the whole case, so loss_scale_factor == 1). Stand-ins: a char-level tokenizer (ids are code
    points; only .decode is used) so THEIR _preprocess_student_inputs decides validity and does the half split
    from real text, and a critic_module whose forward returns the case's score for each row at every position,
    so THEIR _forward_micro_batch does the last-token read and the clip, and THEIR update_critic branch the
    rest. Gradients are d(d_loss)/d(score) on the four leaf score tensors.
  * advantage: their core_algos.compute_grpo_multi_reward_advantage with the trainer's default mode flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import numpy as np
import torch
from torch import nn

SRC = os.environ["PRISM_AUTHORS_SRC"]
sys.path.insert(0, os.path.join(SRC, "verl"))

from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.workers.critic.dp_critic import DataParallelPPOCritic  # noqa: E402

PAD = 0
VALID_TEXT = "<caption>c{i}</caption>\n<think>t{i}</think>\n<answer>{i}</answer>"
INVALID_TEXT = "no layout at all {i}"
TEACHER_CAPTION = "<caption>T{i}</caption>"
TEACHER_COT = "<think>tt{i}</think>\n<answer>{i}</answer>"
PROMPT = "Q?\n"


class CharTokenizer:
    """Ids are Unicode code points; PAD (0) is the only special token."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == PAD))


class ScoreModule(nn.Module):
    """Stand-in critic: the k-th forward returns the k-th queued score vector at every position."""

    def __init__(self) -> None:
        super().__init__()
        self.v_head = nn.Linear(1, 1, bias=False)  # makes dp_critic take the value-head (dict) branch
        self.queue: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **kw):
        name, scores, expected_ids = self.queue.pop(0)
        if expected_ids is not None:
            assert torch.equal(input_ids, expected_ids), f"{name}: unexpected input_ids"
        self.calls.append({"name": name, "input_ids": input_ids.clone(), "attention_mask": attention_mask.clone()})
        b, length = input_ids.shape
        return {"logits": scores.view(b, 1, 1).expand(b, length, 1)}


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def _join(prompt_ids, prompt_mask, resp_ids, resp_mask):
    ids = torch.cat([prompt_ids, resp_ids], dim=1)
    mask = torch.cat([prompt_mask, resp_mask], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids, mask, pos


def run_loss_case(case: dict) -> dict:
    dtype = getattr(torch, case.get("dtype", "float64"))
    tok = CharTokenizer()
    n = len(case["valid"])
    students = [(VALID_TEXT if v else INVALID_TEXT).format(i=i) for i, v in enumerate(case["valid"])]
    prompt_ids, prompt_mask = _pad([tok.encode(PROMPT)] * n)
    resp, resp_mask = _pad([tok.encode(s) for s in students])
    t_cap, t_cap_mask = _pad([tok.encode(TEACHER_CAPTION.format(i=i)) for i in range(n)])
    t_cot, t_cot_mask = _pad([tok.encode(TEACHER_COT.format(i=i)) for i in range(n)])
    t_full, t_full_mask = _pad([tok.encode(TEACHER_CAPTION.format(i=i) + "\n" + TEACHER_COT.format(i=i))
                                for i in range(n)])
    ids, mask, pos = _join(prompt_ids, prompt_mask, resp, resp_mask)
    tc_ids, tc_mask, tc_pos = _join(prompt_ids, prompt_mask, t_cap, t_cap_mask)
    tt_ids, tt_mask, tt_pos = _join(prompt_ids, prompt_mask, t_cot, t_cot_mask)
    tf_ids, tf_mask, tf_pos = _join(prompt_ids, prompt_mask, t_full, t_full_mask)
    data = DataProto.from_dict(tensors={
        "input_ids": ids, "responses": resp, "attention_mask": mask, "position_ids": pos,
        "teacher_input_ids": tf_ids, "teacher_response": t_full, "teacher_attention_mask": tf_mask,
        "teacher_position_ids": tf_pos,
        "teacher_caption": t_cap, "teacher_caption_input_ids": tc_ids, "teacher_caption_attention_mask": tc_mask,
        "teacher_caption_position_ids": tc_pos,
        "teacher_cot": t_cot, "teacher_cot_input_ids": tt_ids, "teacher_cot_attention_mask": tt_mask,
        "teacher_cot_position_ids": tt_pos,
    })
    config = OmegaConf.create({
        "use_mm_gad": True, "score_clip": case.get("score_clip"), "score_reg_coef": case.get("score_reg_coef", 0.0),
        "use_score_length_correction": False, "ulysses_sequence_parallel_size": 1,
        "model": {"use_remove_padding": False, "path": None, "tokenizer_path": None},
        "ppo_mini_batch_size": n, "ppo_micro_batch_size_per_gpu": n, "ppo_epochs": 1, "use_dynamic_bsz": False,
        "grad_clip": 1.0,
    })
    module = ScoreModule()
    critic = DataParallelPPOCritic(config, module, torch.optim.SGD(module.parameters(), lr=0.0))
    critic._tokenizer = tok
    leaves = {k: torch.tensor(case[k], dtype=dtype, requires_grad=True)
              for k in ("student_caption", "student_cot", "teacher_caption", "teacher_cot")}
    # call order in update_critic (mm_gad branch): student caption, student cot, teacher caption, teacher cot
    module.queue = [("student_caption", leaves["student_caption"], None),
                    ("student_cot", leaves["student_cot"], None),
                    ("teacher_caption", leaves["teacher_caption"], tc_ids),
                    ("teacher_cot", leaves["teacher_cot"], tt_ids)]
    metrics = critic.update_critic(data)
    assert not module.queue, "update_critic did not make the four forwards"
    seg = {}
    for call in module.calls[:2]:
        texts = []
        for r in range(n):
            row = call["input_ids"][r][call["attention_mask"][r].bool()][len(PROMPT):]
            texts.append(tok.decode(row))
        seg[call["name"]] = texts
    return {
        "name": case["name"],
        "d_loss": metrics["critic/d_loss"][0],
        "metrics": {k: v[0] for k, v in metrics.items()},
        "grad": {k: v.grad.tolist() for k, v in leaves.items()},
        "student_texts": students,
        "student_segments_scored": seg,
    }


def run_advantage_case(case: dict) -> dict:
    n = len(case["uid"])
    kwargs = dict(
        token_level_rewards=torch.zeros(n, 1), response_mask=torch.ones(n, 1),
        index=np.array(case["uid"], dtype=object),
        caption_scores=torch.tensor(case["caption_scores"], dtype=torch.float32),
        cot_scores=torch.tensor(case["cot_scores"], dtype=torch.float32),
        format_scores=torch.tensor(case["format_scores"], dtype=torch.float32),
        caption_weight=case.get("caption_weight", 0.5), cot_weight=case.get("cot_weight", 0.5),
        format_penalty=case.get("format_penalty", 0.0),
    )
    if "epsilon" in case:
        kwargs["epsilon"] = case["epsilon"]
    adv, _ = core_algos.compute_grpo_multi_reward_advantage(**kwargs)
    return {"name": case["name"], "advantages": adv[:, 0].tolist()}


def main() -> None:
    spec = json.load(sys.stdin)
    with contextlib.redirect_stdout(sys.stderr):  # their code prints progress lines
        out = {
            "loss_cases": [run_loss_case(c) for c in spec.get("loss_cases", [])],
            "advantage_cases": [run_advantage_case(c) for c in spec.get("advantage_cases", [])],
        }
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
