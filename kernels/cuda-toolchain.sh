#!/usr/bin/env bash
# Prepares a CUDA 13.0 toolchain from NVIDIA's PyPI wheels, for building `--features cuda` on a
# machine without a CUDA toolkit (and without a GPU), then prints the environment to export:
#
#   eval "$(kernels/cuda-toolchain.sh [--nccl] [DIR])"
#   cargo build --release --features cuda          # or --features viz/nccl with --nccl
#
# --nccl also installs NCCL (nvidia-nccl-cu13), for the `nccl` feature (multi-GPU data parallel).
#
# DIR (default: $XDG_CACHE_HOME or ~/.cache, then contrastive-workbench/cuda-13.0) receives a
# Python virtual environment with the wheels (~3 GB) and `home/`, a stand-in CUDA_HOME whose
# `lib/` holds the unversioned library names the linker looks for. Running it again reuses both.
#
# Why each piece:
# - candle's `cuda` feature builds cudarc with `cuda-version-from-build-system` and
#   `dynamic-linking`: the build runs `nvcc --version` (so nvcc must be on PATH, and no newer
#   than 13.0: the GPU machines' driver 580 is CUDA 13.0 and would not load newer PTX), and links
#   libcuda, libnvrtc, libcurand, libcublas and libcublasLt at link time.
# - candle-kernels compiles its .cu files with nvcc for CUDA_COMPUTE_CAP (default 90 here:
#   H100/H200; set it before running this script for another GPU).
# - libcuda is the driver and ships in no wheel. For linking only, `home/lib/libcuda.so` is a
#   stub exporting the driver functions cudarc declares; each returns CUDA_ERROR_NO_DEVICE, so a
#   binary started against the stub reports "no device" instead of misbehaving. On a machine
#   with an NVIDIA driver the real libcuda.so.1 is used at run time.
# - Our own kernels are compiled at run time by NVRTC: libnvrtc and libnvrtc-builtins must be
#   on LD_LIBRARY_PATH when a `cuda` binary or test runs (no GPU needed for the compile test).
#
# The build then takes about as long as candle's CUDA kernels take nvcc (see the README's GPU
# section for measured times).
set -euo pipefail

nccl=0
if [ "${1:-}" = "--nccl" ]; then nccl=1; shift; fi
dir="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/contrastive-workbench/cuda-13.0}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cudarc_version=0.19.10
log() { echo "cuda-toolchain: $*" >&2; }

command -v python3 >/dev/null || { log "python3 is needed (with the venv module)"; exit 1; }
command -v cc >/dev/null || { log "a C compiler (cc) is needed for the libcuda link stub"; exit 1; }

venv="$dir/venv"
if [ ! -f "$venv/.cuda-wheels-installed" ]; then
  log "installing the CUDA 13.0 wheels into $venv (about 3 GB)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
    nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 >&2
  touch "$venv/.cuda-wheels-installed"
fi
if [ "$nccl" = 1 ] && [ ! -f "$venv/.nccl-wheel-installed" ]; then
  log "installing NCCL into $venv"
  "$venv/bin/pip" install --quiet nvidia-nccl-cu13==2.27.7 >&2
  touch "$venv/.nccl-wheel-installed"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cu="$site/nvidia/cu13"
[ -x "$cu/bin/nvcc" ] || { log "no nvcc in $cu/bin: the wheel layout changed"; exit 1; }

home="$dir/home"
mkdir -p "$home/lib"
for l in cublas cublasLt cudart nvrtc; do ln -sf "$cu/lib/lib$l.so.13" "$home/lib/lib$l.so"; done
ln -sf "$cu/lib/libcurand.so.10" "$home/lib/libcurand.so"
nccl_path=""
if [ "$nccl" = 1 ]; then
  nc="$site/nvidia/nccl"
  [ -f "$nc/lib/libnccl.so.2" ] || { log "no libnccl.so.2 in $nc/lib: the wheel layout changed"; exit 1; }
  ln -sf "$nc/lib/libnccl.so.2" "$home/lib/libnccl.so"
  nccl_path=":$nc/lib"
fi

# The link stub: every driver function of cudarc's bindings, returning CUDA_ERROR_NO_DEVICE.
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
find_sys() { ls "$registry"/*/cudarc-$cudarc_version/src/driver/sys/mod.rs 2>/dev/null | head -n1; }
sys="$(find_sys || true)"
if [ -z "$sys" ]; then
  log "fetching the crates (cudarc's sources name the driver functions)"
  cargo fetch --manifest-path "$repo/Cargo.toml" >&2
  sys="$(find_sys || true)"
fi
[ -n "$sys" ] || { log "cudarc $cudarc_version not found under $registry"; exit 1; }
grep -ohE 'pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | awk '{print $4}' | sort -u |
  awk '{print "int " $1 "(void) { return 100; }"}' >"$home/lib/libcuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib/libcuda.so" "$home/lib/libcuda-stub.c"

# At run time: the wheel's libraries; the stub only where no driver is installed.
run_path="$cu/lib$nccl_path"
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  mkdir -p "$home/stub"
  ln -sf "$home/lib/libcuda.so" "$home/stub/libcuda.so.1"
  run_path="$run_path:$home/stub"
  log "no NVIDIA driver here: binaries will start against the stub and find no device"
fi

"$cu/bin/nvcc" --version | tail -n1 >&2
cat <<EOF
export PATH="$cu/bin:\$PATH"
export CUDA_HOME="$home"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LD_LIBRARY_PATH="$run_path\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
