#!/usr/bin/env bash
# Build the `vcp` binary with candle's CUDA backend on a machine WITHOUT a GPU or CUDA toolkit.
#
#   bash tools/build_cuda.sh            # → target-cuda/vcp-cuda (stripped)
#
# 1. nvcc + the CUDA 13.0 headers/libraries come from PyPI wheels, pinned to 13.0.x (the GPU
#    machines' driver 580 is CUDA 13.0: PTX from nvcc 13.1+ would be rejected at load time).
# 2. The wheels lack unversioned `libX.so` links and any libcuda.so (the driver's library): we add
#    the links and a link-time stub libcuda.so (empty functions named like cudarc's driver API).
# 3. CUDA_COMPUTE_CAP=90 (H100/H200); no nvidia-smi is needed. Build into target-cuda/ so the
#    CPU build in target/ is untouched.
#
# First build: ~25-40 min on 2 cores (candle-kernels' nvcc work dominates), ~1.2 GB of wheels in
# the cache folder. Later builds reuse both.
#
# Running the binary on a GPU machine: it links libcuda.so.1 (driver) and libcudart/libcublas/
# libcublasLt/libcurand .so.13/.so.10; point the loader at the CUDA 13 libraries there, e.g.
#   export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')
#   ./vcp-cuda features --device cuda ...
# On a machine without the NVIDIA driver it cannot start (the loader aborts: libcuda.so.1 not found);
# use the normal CPU build there.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${VCP_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vcp-clip-rs/cuda13}
PY=${PYTHON:-python3}
WHEELS="$CACHE/pipcuda"
ROOT="$CACHE/root"
mkdir -p "$CACHE"

if [ ! -x "$WHEELS/nvidia/cu13/bin/nvcc" ]; then
  echo "== installing nvcc and the CUDA 13.0 libraries from PyPI into $WHEELS"
  rm -rf "$WHEELS.tmp"
  "$PY" -m pip install --quiet --no-deps --target "$WHEELS.tmp" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    'nvidia-curand>=10.4,<10.4.1' 'nvidia-cublas>=13.0,<13.2'
  mv "$WHEELS.tmp" "$WHEELS"
fi

if [ ! -e "$ROOT/lib/stubs/libcuda.so" ]; then
  echo "== assembling a CUDA root in $ROOT"
  rm -rf "$ROOT"; mkdir -p "$ROOT/lib/stubs"
  P="$WHEELS/nvidia/cu13"
  ln -s "$P/bin" "$P/include" "$P/nvvm" "$ROOT/"
  ln -s "$P"/lib/* "$ROOT/lib/"
  ln -s lib "$ROOT/lib64"
  (cd "$ROOT/lib" && ln -sf libcudart.so.13 libcudart.so && ln -sf libcublas.so.13 libcublas.so \
     && ln -sf libcublasLt.so.13 libcublasLt.so && ln -sf libcurand.so.10 libcurand.so \
     && ln -sf libnvrtc.so.13 libnvrtc.so)
  # Link-time stub of the driver library: every driver function cudarc declares, as an empty
  # function. At run time the real libcuda.so.1 of the GPU machine is loaded instead.
  cargo fetch --quiet
  SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | head -1)
  grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$SYS" | awk '{print "void " $4 "(void){}"}' | sort -u > "$CACHE/cuda_stub.c"
  gcc -shared -fPIC -o "$ROOT/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$CACHE/cuda_stub.c"
fi

export CUDA_ROOT="$ROOT" CUDA_HOME="$ROOT" CUDA_PATH="$ROOT"
export PATH="$ROOT/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
nvcc --version | tail -2
echo "== cargo build --release -p vcp-cli --features cuda (target-cuda/)"
CARGO_TARGET_DIR=target-cuda cargo build --release -p vcp-cli --features cuda
strip -o target-cuda/vcp-cuda target-cuda/release/vcp
# The stripped binary is ~86 MB (embedded PTX + SASS of candle's kernels, polars, plotters);
# gzip brings it to ~23 MB, under the 64 MiB a device session can carry.
gzip -9 -c target-cuda/vcp-cuda > target-cuda/vcp-cuda.gz.tmp && mv target-cuda/vcp-cuda.gz.tmp target-cuda/vcp-cuda.gz
ls -l target-cuda/vcp-cuda target-cuda/vcp-cuda.gz
echo "built target-cuda/vcp-cuda (run on a GPU machine with LD_LIBRARY_PATH set to its CUDA 13 libraries)"
