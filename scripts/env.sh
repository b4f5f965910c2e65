# Source this file: the environment for building advtrain against the project venv's libtorch.
# ADVTRAIN_VENV overrides the venv location (default: <repo>/.venv).
_advtrain_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ADVTRAIN_VENV="${ADVTRAIN_VENV:-$_advtrain_root/.venv}"
export VIRTUAL_ENV="$ADVTRAIN_VENV"
export PATH="$ADVTRAIN_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=0
