# Source this file: the environment for building advtrain against the project venv's libtorch.
# ADVTRAIN_VENV overrides the venv location (default: <repo>/.venv).
_advtrain_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ADVTRAIN_VENV="${ADVTRAIN_VENV:-$_advtrain_root/.venv}"
export VIRTUAL_ENV="$ADVTRAIN_VENV"
export PATH="$ADVTRAIN_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=0
# NCCL: the CUDA headers scripts/nccl-headers fetches (scripts/setup runs it when the venv's
# torch is a CUDA build and no CUDA toolkit is found); used unless CUDA_HOME is already set.
# Absent on a CPU wheel, so nothing changes there.
if [ -z "${CUDA_HOME:-}" ] && [ -f "$_advtrain_root/target/cuda-headers/include/crt/host_config.h" ]; then
  export CUDA_HOME="$_advtrain_root/target/cuda-headers"
fi
