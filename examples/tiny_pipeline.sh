#!/usr/bin/env bash
# The embedded tiny default, end to end on CPU with no model hub — every stage a stock toolkit run:
#   tiny models + toy data -> Stage 1 SFT -> upcycled MoE discriminator -> Stage 2a warm-up
#   -> Stage 2 PRISM alignment -> Stage 3 RLVR (DAPO, verifiable reward; inside LLaMA-Factory on CPU)
#   -> evaluation of the three policies on held-out prompts.
# Run from the folder holding yaml/ and examples/ (the repository root, or `prism-plugin init DIR`).
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
TINY=tiny
OUT=outputs/tiny

echo "== 1/7 tiny tokenizer, models and toy data -> $TINY/"
prism-plugin make-tiny "$TINY"

echo "== 2/7 Stage 1: SFT with the PRISM template (llamafactory-cli train yaml/sft_qwen3vl_tiny.yaml)"
llamafactory-cli train yaml/sft_qwen3vl_tiny.yaml

echo "== 3/7 Stage 2a: upcycle the dense tiny VLM into a 4-expert MoE discriminator"
prism-plugin upcycle "$TINY/qwen3_vl_dense" "$OUT/discriminator" --num-experts 4 --top-k 2

echo "== 4/7 Stage 2a: discriminator warm-up on teacher/student pairs (stage prism_disc)"
llamafactory-cli train yaml/prism_disc_warmup_tiny.yaml

echo "== 5/7 Stage 2: PRISM alignment, policy vs discriminator (stage prism_align)"
llamafactory-cli train yaml/prism_align_tiny.yaml

echo "== 6/7 Stage 3: RLVR with DAPO and the verifiable reward (yaml/prism_rlvr_tiny.yaml; EasyR1 on GPUs)"
llamafactory-cli train yaml/prism_rlvr_tiny.yaml

echo "== 7/7 evaluation of the SFT, aligned and RLVR policies on held-out prompts"
prism-plugin evaluate --model "$OUT/sft" --model "$OUT/align" --model "$OUT/rlvr" --name sft --name align \
    --name rlvr --data "$TINY/data/eval.jsonl" --out "$OUT/eval" --max-new-tokens 128

echo "done:"
echo "  SFT policy       $OUT/sft (loss curve training_loss.png)"
echo "  discriminator    $OUT/discriminator_warm (training_accuracy.png)"
echo "  aligned policy   $OUT/align, its discriminator $OUT/align/discriminator (curves training_*.png)"
echo "  RLVR policy      $OUT/rlvr (curves training_*.png)"
echo "  evaluation       $OUT/eval/summary.json, per-response $OUT/eval/<name>.jsonl, chart $OUT/eval/comparison.png"
echo "At this scale the table shows the pipeline runs and what each metric means; it does not show PRISM's gains."
