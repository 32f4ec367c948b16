#!/usr/bin/env bash
# The GPU check: one command that validates and measures the trainer on a bare GPU machine.
#
#   bash scripts/gpu_check.sh                  # on the GPU machine (make gpu-check)
#   DEVICE=cpu bash scripts/gpu_check.sh       # dry run on a CPU: tiny models, few repeats
#
# Stages, each under its own time limit so that one hang costs only itself:
#   setup   install the carried wheels (.whl/, `make gpu-wheels`) into a folder on PYTHONPATH,
#           beside this repository, and show where each import resolves; the machine's info
#   tests   pytest -m cuda tests/cuda (the CUDA-only paths against their CPU twins)
#   step    benchmarks/step_time.py: RN50 and ViT-B-16 at 224 px, random weights, fp32 and bf16
#           autocast, batch 32 + 32 and with FixMatch's third view
#   trials  benchmarks/trials_per_device.py: 1, 2 and 4 trainers on the one GPU
#   report  benchmarks/gpu_report.py: every figure in one markdown file, $OUT/gpu_check.md
# On the GPU the limits add up to under 8 minutes. Environment:
#   OUT      where results go (default runs/gpu-check); at most 8 files, no sub-folders
#   DEVICE   cuda (default) or cpu
#   PYTHON   the interpreter that holds torch (default python3)
#   WHEELS   the folder of wheels to install (default .whl)
#   STAGES   the stages to run (default "tests step trials"; setup and report always run)
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/runs/gpu-check}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
STAGES=${STAGES:-tests step trials}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SITE=${SITE:-$(mktemp -d /tmp/vlpuda-site.XXXXXX)}
LOG=$OUT/gpu_check.log
STATUS=$OUT/stages.jsonl
: >"$LOG"
: >"$STATUS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled VLPUDA_CHECK_DEVICE=$DEVICE

if [ "$DEVICE" = cuda ]; then
    # Limits: 20 + 20 + 140 + 4 x 40 + 2 x 60 + 20 = 480 s at most; about 5 minutes expected.
    MODELS="ViT-B-16 RN50"; SIZE=224; REPEATS=20; STEPS=20; ROUNDS=1
    LIMIT_SETUP=20; LIMIT_TESTS=140; LIMIT_STEP=40; LIMIT_TRIALS=60
else  # the dry run: the same commands on the tiny test towers
    MODELS="tiny-vit-test tiny-rn-test"; SIZE=32; REPEATS=2; STEPS=3; ROUNDS=1
    LIMIT_SETUP=300; LIMIT_TESTS=3000; LIMIT_STEP=600; LIMIT_TRIALS=900
fi

# stage NAME LIMIT_S COMMAND...: run it under its limit, log it, record its outcome.
stage() {
    local name=$1 limit=$2 start rc
    shift 2
    echo "=== $name (limit ${limit} s): $*" | tee -a "$LOG"
    start=$(date +%s)
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    local seconds=$(( $(date +%s) - start ))
    local outcome=ok
    [ $rc -ne 0 ] && outcome=failed
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && outcome="timed out"
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $seconds, \"limit\": $limit, \"outcome\": \"$outcome\"}" >>"$STATUS"
    tail -n 3 "$LOG"  # the stage's last words: the reply of a device run shows only the end
    echo "=== $name: $outcome (rc $rc) in ${seconds} s" | tee -a "$LOG"
}

wanted() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# ---- setup: the wheels on PYTHONPATH, with the repository first -----------------------------
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "no wheels in $WHEELS: run 'make gpu-wheels' on a machine with a registry, and carry" \
         "$WHEELS" | tee -a "$LOG"
    exit 2
fi
stage install "$LIMIT_SETUP" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "${wheels[@]}"
export PYTHONPATH=$REPO:$SITE
stage environment "$LIMIT_SETUP" "$PYTHON" - "$SITE" "$DEVICE" <<'EOF'
import importlib, platform, subprocess, sys, os
site, device = sys.argv[1], sys.argv[2]
print("python", platform.python_version(), sys.executable, "| cpus", os.cpu_count())
import torch
print("torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
if device == "cuda":
    assert torch.cuda.is_available(), "DEVICE=cuda but torch sees no GPU"
    try:
        subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                        "clocks.sm,clocks.max.sm", "--format=csv"], check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        print("nvidia-smi:", err)
# Carried packages must come from the wheels folder, vlpuda from this repository.
for name in ("open_clip", "pydantic", "pydantic_core", "ftfy", "optuna", "vlpuda"):
    module = importlib.import_module(name)
    where = module.__file__
    print(f"{name:14} {getattr(module, '__version__', '')} {where}")
    expected = os.getcwd() if name == "vlpuda" else site
    assert where.startswith(expected), f"{name} resolves outside {expected}"
for name in ("ray", "mlflow"):
    try:
        importlib.import_module(name)
        print(f"{name:14} importable")
    except ImportError:
        print(f"{name:14} not installed: the tests that need it skip")
import vlpuda.cli, vlpuda.trainables.loop  # noqa: E401  the trainer's whole import closure
vlpuda.cli.build_parser()
EOF

# ---- the checks and the measurements --------------------------------------------------------
if wanted tests; then
    stage tests "$LIMIT_TESTS" "$PYTHON" -m pytest -q -m cuda tests/cuda -p no:cacheprovider \
        -rs --junitxml "$OUT/tests.xml"
fi
if wanted step; then
    for model in $MODELS; do
        for precision in amp_bf16 fp32; do
            # Each (model, precision) in its own process: 32 + 32, then FixMatch's 32 + 32 + 32.
            stage "step $model $precision" "$LIMIT_STEP" "$PYTHON" benchmarks/step_time.py \
                --models "$model" --image-size "$SIZE" --repeats "$REPEATS" --device "$DEVICE" \
                --precision "$precision" --views 2 3 --jsonl "$OUT/step_time.jsonl"
        done
    done
fi
if wanted trials; then
    for model in $MODELS; do
        stage "trials $model" "$LIMIT_TRIALS" "$PYTHON" benchmarks/trials_per_device.py \
            --device "$DEVICE" --models "$model" --image-size "$SIZE" --precision amp_bf16 \
            --trials 1 2 4 --steps "$STEPS" --rounds "$ROUNDS" --jsonl "$OUT/trials.jsonl"
    done
fi

# ---- one file of figures ---------------------------------------------------------------------
stage report "$LIMIT_SETUP" "$PYTHON" benchmarks/gpu_report.py "$OUT"
echo "=== figures: $OUT/gpu_check.md" | tee -a "$LOG"
cat "$OUT/gpu_check.md" 2>/dev/null
# The exit status: 0 only when every stage passed.
! grep -q '"outcome": "\(failed\|timed out\)"' "$STATUS"
