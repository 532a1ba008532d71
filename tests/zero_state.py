"""The bytes DeepSpeed ZeRO holds for a policy after one step, measured (tests only; one process, CPU).

``python tests/zero_state.py MODEL_DIR OUT_DIR STAGE`` loads the policy with LLaMA-Factory's own loader
(full tuning, trainable parameters upcast to fp32), hands it and a torch AdamW to ``deepspeed.initialize``
with bf16 and ZeRO stage STAGE, runs one step and prints, as JSON, the bytes of the module's parameters and
buffers, the fp32 master partition, the gradients (the bf16 ones after backward plus the fp32 copy the
optimizer step sees) and the AdamW moments.
"""

from __future__ import annotations

import json
import os
import sys


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main(model_dir: str, out_dir: str, stage: int) -> dict[str, int]:
    import deepspeed
    import torch
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer

    args = {"model_name_or_path": model_dir, "stage": "sft", "do_train": True, "dataset": "unused",
            "finetuning_type": "full", "output_dir": out_dir, "overwrite_output_dir": True, "report_to": "none"}
    model_args, _, _, finetuning_args, _ = get_train_args(args)
    model = load_model(load_tokenizer(model_args)["tokenizer"], model_args, finetuning_args, is_trainable=True)
    config = {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": stage, "reduce_bucket_size": 1000, "overlap_comm": False}}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    engine, zero, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    fp32_grads = {}
    inner_step = zero.optimizer.step

    def step(*a, **k):  # the fp32 gradient partition exists while the wrapped AdamW steps
        fp32_grads["bytes"] = _nbytes(g.grad for g in zero.single_partition_of_fp32_groups)
        return inner_step(*a, **k)

    zero.optimizer.step = step
    ids = torch.randint(0, 1200, (1, 8))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    low_grads = _nbytes(t for group in zero.averaged_gradients.values() if group for t in group)
    engine.step()
    moments = [v for s in zero.optimizer.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    return {
        "weights": _nbytes(engine.module.parameters()) + _nbytes(engine.module.buffers()),
        "fp32 master weights": _nbytes(zero.single_partition_of_fp32_groups),
        "gradients": low_grads + fp32_grads["bytes"],
        "AdamW moments": _nbytes(moments),
    }


if __name__ == "__main__":
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29541"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
