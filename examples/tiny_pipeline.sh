#!/usr/bin/env bash
# The embedded tiny default, end to end on CPU with no model hub — every stage a stock toolkit run:
#   tiny models + toy data -> Stage 1 SFT -> upcycled MoE discriminator -> Stage 2a warm-up (with the SFT
#   policy's own samples)
#   -> Stage 2 PRISM alignment -> Stage 3 RLVR (DAPO, verifiable reward; inside LLaMA-Factory on CPU)
#   -> evaluation of the three policies on held-out prompts -> what the table shows, stage by stage.
# Run from the folder holding yaml/ and examples/ (the repository root, or `prism-plugin init DIR`).
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
TINY=tiny
OUT=outputs/tiny

echo "== 1/8 tiny tokenizer, models and toy data -> $TINY/"
prism-plugin make-tiny "$TINY"

echo "== 2/8 Stage 1: SFT with the PRISM template (llamafactory-cli train yaml/sft_qwen3vl_tiny.yaml)"
llamafactory-cli train yaml/sft_qwen3vl_tiny.yaml

echo "== 3/8 Stage 2a: upcycle the dense tiny VLM into a 4-expert MoE discriminator"
prism-plugin upcycle "$TINY/qwen3_vl_dense" "$OUT/discriminator" --num-experts 4 --top-k 2

echo "== 4/8 Stage 2a: warm-up pairs of the teacher with the SFT policy's own samples, then the discriminator warm-up"
echo "   on those and the synthetic miscount pairs (stage prism_disc)"
prism-plugin data make-pairs --policy "$OUT/sft" --data "$TINY/data/align.jsonl" --out "$TINY/data/policy_pairs.jsonl" \
    --num-samples 4 --max-new-tokens 64 --dataset-name prism_tiny_policy_pairs
llamafactory-cli train yaml/prism_disc_warmup_tiny.yaml dataset=prism_tiny_pairs,prism_tiny_policy_pairs

echo "== 5/8 Stage 2: PRISM alignment, policy vs discriminator (stage prism_align)"
llamafactory-cli train yaml/prism_align_tiny.yaml

echo "== 6/8 Stage 3: RLVR with DAPO and the verifiable reward (yaml/prism_rlvr_tiny.yaml; EasyR1 on GPUs)"
llamafactory-cli train yaml/prism_rlvr_tiny.yaml

echo "== 7/8 evaluation of the SFT, aligned and RLVR policies on held-out prompts"
prism-plugin evaluate --model "$OUT/sft" --model "$OUT/align" --model "$OUT/rlvr" --name sft --name align \
    --name rlvr --data "$TINY/data/eval.jsonl" --out "$OUT/eval" --max-new-tokens 128

echo "outputs:"
echo "  SFT policy       $OUT/sft (loss curve training_loss.png)"
echo "  discriminator    $OUT/discriminator_warm (training_accuracy.png)"
echo "  aligned policy   $OUT/align, its discriminator $OUT/align/discriminator (curves training_*.png)"
echo "  RLVR policy      $OUT/rlvr (curves training_*.png)"
echo "  evaluation       $OUT/eval/summary.json, per-response $OUT/eval/<name>.jsonl, chart $OUT/eval/comparison.png"
echo "  reading          $OUT/eval/summary.md (the table, a line per stage, the alignment's score gap start -> end)"

echo "== 8/8 what the table shows: each stage's change, and the alignment's own score-gap curve"
prism-plugin tiny-summary --eval "$OUT/eval" --align "$OUT/align"
