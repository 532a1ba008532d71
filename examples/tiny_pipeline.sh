#!/usr/bin/env bash
# The embedded tiny default, end to end on CPU with no model hub:
#   tiny models + toy data -> Stage 1 SFT (stock LLaMA-Factory) -> upcycled MoE discriminator
#   -> a dry run of one alignment step from the SFT checkpoint.
# Run from the repository root with prism-plugin installed (README, command (a)).
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
TINY=${TINY:-tiny}
OUT=${OUT:-outputs/tiny}

echo "== 1/4 tiny tokenizer, models and toy data -> $TINY/"
prism-plugin make-tiny "$TINY"

echo "== 2/4 Stage 1: SFT with the PRISM template (llamafactory-cli train yaml/sft_tiny.yaml)"
llamafactory-cli train yaml/sft_tiny.yaml model_name_or_path="$TINY/qwen3_vl_policy" \
  dataset_dir="$TINY/data" output_dir="$OUT/sft"

echo "== 3/4 Stage 2a: upcycle the dense tiny VLM into a 4-expert MoE discriminator"
prism-plugin upcycle "$TINY/qwen3_vl_dense" "$OUT/discriminator" --num-experts 4 --top-k 2

echo "== 4/4 Stage 2 preview: one alignment step, no update"
prism-plugin align-preview --policy "$OUT/sft" --discriminator "$OUT/discriminator" \
  --data "$TINY/data/align.jsonl" --num-prompts 2 --num-generations 4 --out "$OUT/align_preview.json"
echo "done: SFT loss curve $OUT/sft/training_loss.png, preview $OUT/align_preview.json"
