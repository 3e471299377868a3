#!/usr/bin/env bash
# Builds the GPU check into one folder that runs on a machine with an NVIDIA GPU and no Rust:
#
#   kernels/gpu-bundle.sh [--toolchain DIR] [--out DIR]     # default out: target/gpu-bundle
#
# The folder holds, stripped and xz-compressed (about 30 MB together):
# - `integration.xz`: the integration tests built with `--features cuda,nccl`;
# - `workbench.xz`: the release `workbench` binary with `cuda,nccl` (no GUI);
# - `run.sh`: run there. It unpacks both, puts the CUDA and NCCL libraries of the machine's
#   Python packages (PyTorch's `nvidia-*` wheels) on LD_LIBRARY_PATH, and runs the stages named
#   on its command line (default: all), each under a time limit, writing one log per stage to
#   $OUT (or the directory in WB_GPU_OUT, default ./gpu-results):
#     devices `workbench devices`: each GPU's name, memory and a kernel + cuBLAS check;
#     tests   the GPU tests: fused ops against their references (`kernels::cuda`), training
#             against the CPU (`gpu::`), NCCL data parallel (`parallel::nccl`);
#     loader  `bench loader --device cuda`: device idle time waiting for data, batches loaded in
#             the step vs built ahead by the prefetch thread;
#     torch   `bench torch --device cuda`: training throughput and peak memory of tiny and small
#             at batch 256 and 1024 in f32 and bf16, beside PyTorch eager in the same run;
#     micro   `bench micro --device cuda`: peak device memory and throughput of small at batch
#             1024 in 1, 2, 4 and 8 micro-batches, f32 and bf16.
#   Not yet timed on a GPU: each stage is capped (STAGE_TIMEOUT, default 420 s), so `tests
#   loader` and `torch` can go in separate calls of a time-limited GPU machine.
#
# The build uses the CUDA 13.0 toolchain of kernels/cuda-toolchain.sh (made in DIR, or that
# script's default, if absent) and cargo's target directory (CARGO_TARGET_DIR if set). A machine
# with its own CUDA toolkit and NCCL can skip the script and run cargo directly.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
toolchain=()
out="$repo/target/gpu-bundle"
while [ $# -gt 0 ]; do
  case "$1" in
    --toolchain) toolchain=("$2"); shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--toolchain DIR] [--out DIR]" >&2; exit 2 ;;
  esac
done
log() { echo "gpu-bundle: $*" >&2; }
for tool in strip xz python3; do
  command -v "$tool" >/dev/null || { log "$tool is needed"; exit 1; }
done

eval "$("$repo/kernels/cuda-toolchain.sh" --nccl "${toolchain[@]}")"
cd "$repo"

# The path of the executable cargo builds for `target` (a test or binary name).
executable() {
  python3 -c '
import json, sys
name = sys.argv[1]
path = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == name and m.get("executable"):
        path = m["executable"]
if path is None:
    sys.exit("gpu-bundle: cargo built no executable named " + name)
print(path)' "$1"
}

log "building the integration tests with cuda,nccl"
tests=$(cargo test -p integration-tests --features cuda,nccl --test integration --no-run \
  --message-format=json-render-diagnostics | executable integration)
log "building the release workbench binary with cuda,nccl"
bin=$(cargo build --release -p viz --no-default-features --features cuda,nccl --bin workbench \
  --message-format=json-render-diagnostics | executable workbench)

mkdir -p "$out"
for pair in "integration:$tests" "workbench:$bin"; do
  name=${pair%%:*} path=${pair#*:}
  strip -o "$out/$name" "$path"
  xz -T0 -6 -f "$out/$name"
done
cp "$repo/kernels/gpu-run.sh" "$out/run.sh"
chmod +x "$out/run.sh"
git rev-parse HEAD > "$out/commit" 2>/dev/null || true
du -sh "$out"/* >&2
log "done: copy $out to the GPU machine and run its run.sh"
