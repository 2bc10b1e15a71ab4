# Source me: create (once) and activate the project's virtualenv, cached OUTSIDE the clone and keyed on
# the dependency files, so a warm machine does not reinstall gigabytes.
#   FUNASR_NANO_HF_CACHE   cache root (default ~/.cache/funasr_nano_hf)
#   TORCH_INDEX_URL        where the torch/torchaudio pair comes from, for a CUDA build matching your driver, e.g.
#                          https://download.pytorch.org/whl/cu126 (default: PyPI, whose Linux torch is a CUDA 13
#                          build needing driver >= 580); part of the venv's key
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_py="${PYTHON:-python3}"
# The key covers the pinned heavy stack (requirements.txt is the superset of pyproject's ranges; `pip check`
# below catches drift) and the Python version; requirements-dev.txt is installed on top, outside the key.
_key="$( { cat "$_repo/.ci/requirements.txt" "$_repo/.ci/requirements-build.txt"; "$_py" -c 'import sys; print(sys.version_info[:2])'; if [ -n "${TORCH_INDEX_URL:-}" ]; then echo "$TORCH_INDEX_URL"; fi; } | sha256sum | cut -c1-16)"
_venv="${FUNASR_NANO_HF_CACHE:-$HOME/.cache/funasr_nano_hf}/venv-$_key"
# pip runs quietly (its log is shown only when it fails: this machine's extra package folders make it print
# one harmless warning per package).
_pip() { "$_venv/bin/python" -m pip "$@" >"$_venv.pip.log" 2>&1 || { grep -v "is neither a file nor a directory" "$_venv.pip.log" >&2; return 1; }; }
mkdir -p "$(dirname "$_venv")"
# One creator at a time: a second shell waits here instead of deleting the first one's half-built venv.
exec 9>"$_venv.lock"
flock 9
if [ ! -f "$_venv/.complete" ]; then
  echo "[venv] creating $_venv (first run on this machine: downloads torch etc., several minutes)" >&2
  rm -rf "$_venv"
  "$_py" -m venv "$_venv"
  _pip install -q --upgrade pip wheel setuptools
  # The matched CPU-capable pair first, so nothing else pulls a different torch.
  _pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
    "$(grep '^torch==' "$_repo/.ci/requirements.txt")" "$(grep '^torchaudio==' "$_repo/.ci/requirements.txt")"
  _pip install -q -r "$_repo/.ci/requirements.txt"
  # deepspeed ships as an sdist that imports torch at build time: build it against the installed torch.
  _pip install -q --no-build-isolation "$(grep '^deepspeed' "$_repo/.ci/requirements-build.txt")"
  touch "$_venv/.complete"
fi
_pip install -q -r "$_repo/.ci/requirements-dev.txt"
"$_venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$_repo" >/dev/null 2>&1 \
  || "$_venv/bin/python" -m pip install --no-deps --no-build-isolation -e "$_repo"
"$_venv/bin/python" -m pip check >&2
flock -u 9
# shellcheck disable=SC1091
source "$_venv/bin/activate"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
# shellcheck source=scripts/gpu_env.sh
source "$_repo/scripts/gpu_env.sh"
