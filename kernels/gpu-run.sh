#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU from a folder made by kernels/gpu-bundle.sh
# (copied there as run.sh beside integration.xz and workbench.xz):
#
#   bash run.sh [devices] [tests] [loader] [torch] [micro]      # default: all five
#
# Logs go to $OUT, else $WB_GPU_OUT, else ./gpu-results. PYTHON names the Python with PyTorch
# (default python3); STAGE_TIMEOUT caps each stage in seconds (default 420).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
results="${OUT:-${WB_GPU_OUT:-$PWD/gpu-results}}"
python="${PYTHON:-python3}"
limit="${STAGE_TIMEOUT:-420}"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(devices tests loader torch micro)
mkdir -p "$results"
summary="$results/summary.txt"
say() { echo "$*" | tee -a "$summary"; }

bin="$(mktemp -d)"
for name in integration workbench; do
  xz -dc "$here/$name.xz" > "$bin/$name" && chmod +x "$bin/$name" ||
    { say "cannot unpack $here/$name.xz"; exit 1; }
done

# Every `lib` folder of the NVIDIA wheels beside PyTorch (cu13 runtime, cuBLAS, NVRTC, NCCL, …),
# then a system toolkit if there is one; the driver's libcuda comes from the system.
libs=$("$python" - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
dirs = sorted({os.path.dirname(p) for r in roots
               for p in glob.glob(os.path.join(r, "**", "lib", "*.so*"), recursive=True)})
print(":".join(dirs))
EOF
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

say "commit $(cat "$here/commit" 2>/dev/null || echo unknown); $(date -u +%Y-%m-%dT%H:%MZ)"
nvidia-smi > "$results/nvidia-smi.txt" 2>&1 || say "nvidia-smi failed"
say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -3)"
export RUST_BACKTRACE=0
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
threads=$(nproc)

run_stage() {
  local name=$1; shift
  local start=$SECONDS
  timeout "$limit" "$@" > "$results/$name.log" 2>&1
  local rc=$?
  say "stage $name: exit $rc after $((SECONDS - start)) s (log: $name.log)"
  return 0
}

for stage in "${stages[@]}"; do
  case "$stage" in
    devices)
      # The GPUs as the binary sees them, each checked (an NVRTC kernel and a cuBLAS product
      # against the CPU): a library or driver problem shows here in seconds.
      run_stage devices "$bin/workbench" devices
      tee -a "$summary" < "$results/devices.log"
      ;;
    tests)
      # One test at a time, each test's printed figures (GPU against CPU) kept in the log.
      run_stage tests "$bin/integration" --test-threads 1 --nocapture kernels::cuda gpu:: \
        parallel::nccl
      # The verdicts and every figure the tests print (GPU against CPU, bf16 against f32, NCCL).
      grep -E "test result|FAILED|panicked|skipped|GPU|NCCL" "$results/tests.log" | tee -a "$summary"
      ;;
    loader)
      run_stage loader "$bin/workbench" bench loader --device cuda --steps 20 --rounds 3
      tail -3 "$results/loader.log" | tee -a "$summary"
      ;;
    torch)
      run_stage torch "$bin/workbench" bench torch --device cuda --preset tiny,small \
        --batch 256,1024 --precision f32,bf16 --embed 0 --rounds 3 --steps 10 --warmup 3 \
        --threads "$threads" --python "$python"
      grep -A12 "^preset" "$results/torch.log" | tee -a "$summary"
      ;;
    micro)
      # Peak device memory and throughput of small at batch 1024 in 1, 2, 4 and 8 micro-batches.
      run_stage micro "$bin/workbench" bench micro --device cuda --preset small --batch 1024 \
        --micro 1,2,4,8 --precision f32,bf16 --rounds 3 --steps 5 --warmup 2
      grep -A9 "^preset" "$results/micro.log" | tee -a "$summary"
      ;;
    *) say "unknown stage $stage (expected devices, tests, loader, torch or micro)" ;;
  esac
done
rm -rf "$bin"
