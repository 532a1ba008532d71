#!/usr/bin/env bash
# Teacher demonstrations from a black-box teacher behind an OpenAI-compatible API, on the tiny default
# (CPU, no model hub, nothing leaves 127.0.0.1):
#   serve a stand-in teacher with `llamafactory-cli api` on loopback
#   -> prism-plugin data teach (SFT set + alignment rows + report)
#   -> a short Stage 1 SFT on what it wrote (llamafactory-cli train yaml/sft_qwen3vl_tiny.yaml + overrides).
# The stand-in teacher is the tiny SFT policy of examples/tiny_pipeline.sh (outputs/tiny/sft); it is built
# here when missing (the untrained tiny/qwen3_vl_policy does not write the PRISM layout, so teach would keep
# nothing). With a real teacher, skip the server and point --api-base / --model / --api-key-env at it.
# Run from the repository root with prism-plugin installed (README, command (a)).
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
TINY=tiny
TEACHER=outputs/tiny/sft
OUT=outputs/tiny/teach
export TEACH_API_KEY=tiny-local-key  # the server requires it; teach reads it from the variable named below

if [ ! -f "$TINY/data/rlvr.jsonl" ]; then
  echo "== 0/4 tiny tokenizer, models and toy data -> $TINY/"
  prism-plugin make-tiny "$TINY"
fi
if [ ! -f "$TEACHER/model.safetensors" ]; then
  echo "== 0/4 no $TEACHER yet: Stage 1 SFT of the tiny policy, to serve as the teacher"
  llamafactory-cli train yaml/sft_qwen3vl_tiny.yaml
fi
mkdir -p "$OUT"

PORT=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
BASE="http://127.0.0.1:$PORT/v1"
echo "== 1/4 teacher: llamafactory-cli api serving $TEACHER on $BASE (log $OUT/api.log)"
API_HOST=127.0.0.1 API_PORT=$PORT API_KEY=$TEACH_API_KEY API_VERBOSE=0 \
  llamafactory-cli api --model_name_or_path "$TEACHER" --template prism_qwen3_vl --infer_backend huggingface \
  > "$OUT/api.log" 2>&1 &
SERVER=$!
stop_server() { kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true; }
trap stop_server EXIT
python - "$BASE" "$SERVER" <<'EOF'
import os, sys, time, urllib.request
base, pid = sys.argv[1], int(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
request = urllib.request.Request(f"{base}/models", headers={"Authorization": f"Bearer {os.environ['TEACH_API_KEY']}"})
for _ in range(300):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the API server exited; see its log")
    try:
        opener.open(request, timeout=2).close()
        sys.exit(0)
    except OSError:
        time.sleep(1)
sys.exit("the API server did not answer within 300 s")
EOF

echo "== 2/4 prism-plugin data teach: 16 tiny questions x 4 answers -> $OUT/data"
head -n 16 "$TINY/data/rlvr.jsonl" > "$OUT/questions.jsonl"
prism-plugin data teach --data "$OUT/questions.jsonl" --image-dir "$TINY/data" --out "$OUT/data" \
  --api-base "$BASE" --model tiny-teacher --api-key-env TEACH_API_KEY \
  --samples-per-prompt 4 --max-tokens 128 --temperature 1.0 --concurrency 2
stop_server

echo "== 3/4 Stage 1: a short SFT on the teacher's demonstrations (dataset prism_teach_sft)"
llamafactory-cli train yaml/sft_qwen3vl_tiny.yaml dataset=prism_teach_sft dataset_dir="$OUT/data" \
  output_dir="$OUT/sft" max_steps=10 logging_steps=5 plot_loss=false

echo "== 4/4 done:"
echo "  demonstrations  $OUT/data/sft.json (Stage 1), $OUT/data/align.jsonl (Stage 2 and the teacher side of"
echo "                  warm-up pairs), what was left out and why: $OUT/data/teach_report.json"
echo "  SFT policy      $OUT/sft"
echo "  next: prism-plugin data make-pairs --policy $OUT/sft --data $OUT/data/align.jsonl --out $OUT/pairs.jsonl"
