#!/usr/bin/env bash
# The embedded tiny default, end to end on CPU with no model hub — every stage a stock toolkit run:
#   tiny models + toy data -> Stage 1 SFT -> upcycled MoE discriminator -> Stage 2a warm-up
#   -> Stage 2 PRISM alignment (llamafactory-cli train yaml/prism_align_tiny.yaml).
# Run from the repository root with prism-plugin installed (README, command (a)).
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
TINY=tiny
OUT=outputs/tiny

echo "== 1/5 tiny tokenizer, models and toy data -> $TINY/"
prism-plugin make-tiny "$TINY"

echo "== 2/5 Stage 1: SFT with the PRISM template (llamafactory-cli train yaml/sft_qwen3vl_tiny.yaml)"
llamafactory-cli train yaml/sft_qwen3vl_tiny.yaml

echo "== 3/5 Stage 2a: upcycle the dense tiny VLM into a 4-expert MoE discriminator"
prism-plugin upcycle "$TINY/qwen3_vl_dense" "$OUT/discriminator" --num-experts 4 --top-k 2

echo "== 4/5 Stage 2a: discriminator warm-up on teacher/student pairs (stage prism_disc)"
llamafactory-cli train yaml/prism_disc_warmup_tiny.yaml

echo "== 5/5 Stage 2: PRISM alignment, policy vs discriminator (stage prism_align)"
llamafactory-cli train yaml/prism_align_tiny.yaml

echo "done:"
echo "  SFT policy       $OUT/sft (loss curve training_loss.png)"
echo "  discriminator    $OUT/discriminator_warm (training_accuracy.png)"
echo "  aligned policy   $OUT/align, its discriminator $OUT/align/discriminator (curves training_*.png)"
