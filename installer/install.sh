#!/usr/bin/env bash
# Sets up the inspection station in ./.venv: the right torch build, then the project with its dev extras.
#
#   bash installer/install.sh [--torch auto|cpu|cuda] [--python PYTHON] [--no-dev]
#
# torch: "auto" (default) picks the CUDA build when an NVIDIA GPU answers `nvidia-smi`, else the CPU build.
# Set TORCH_INDEX_URL to install torch from a specific package index (for example a CPU-only or CUDA index).
# Idempotent: a second run with nothing changed only checks and reports.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

torch_choice="auto"
python_bin="${PYTHON:-python3}"
extras="[dev]"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --torch) torch_choice="$2"; shift 2 ;;
    --python) python_bin="$2"; shift 2 ;;
    --no-dev) extras=""; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

TORCH_VERSION="2.13.0"
say() { printf '[install] %s\n' "$*"; }

case "$torch_choice" in
  auto)
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      torch_choice="cuda"; say "NVIDIA GPU found: $(nvidia-smi -L | head -n1)"
    else
      torch_choice="cpu"; say "no NVIDIA GPU found: using the CPU build of torch"
    fi ;;
  cpu|cuda) say "torch build chosen by flag: $torch_choice" ;;
  *) echo "install.sh: --torch must be auto, cpu or cuda, not '$torch_choice'" >&2; exit 2 ;;
esac

if ! "$python_bin" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 14) else 1)'; then
  echo "install.sh: $python_bin is $("$python_bin" --version 2>&1); the station needs Python 3.10 to 3.13" >&2
  exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv with $("$python_bin" --version 2>&1)"
  "$python_bin" -m venv .venv
else
  say ".venv exists: reusing it"
fi
py=".venv/bin/python"
pip_q=("$py" -m pip --disable-pip-version-check -q)

# The stamp records what was installed; when nothing it depends on changed, the run ends here.
stamp=".venv/.inspector-install-stamp"
want="torch=$TORCH_VERSION/$torch_choice extras=$extras pyproject=$(sha256sum pyproject.toml | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$py" -c 'import torch, core' 2>/dev/null; then
  say "already set up ($want): nothing to do"
  exit 0
fi

installed_torch="$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
torch_ok=false
case "$torch_choice/$installed_torch" in
  cpu/"$TORCH_VERSION"*) [[ "$installed_torch" != *cu* ]] && torch_ok=true ;;
  cuda/"$TORCH_VERSION"*) [[ "$installed_torch" != *cpu* ]] && torch_ok=true ;;
esac
if $torch_ok; then
  say "torch $installed_torch already installed"
else
  index_args=()
  [[ -n "${TORCH_INDEX_URL:-}" ]] && index_args=(--index-url "$TORCH_INDEX_URL")
  say "installing torch==$TORCH_VERSION ($torch_choice build)"
  "${pip_q[@]}" install "${index_args[@]}" "torch==$TORCH_VERSION"
fi

say "installing the station and its dependencies (extras: ${extras:-none})"
"${pip_q[@]}" install -e ".$extras"

"$py" - <<'PY'
import torch, cv2, sqlalchemy, harvesters, genicam, PySide6, pyqtgraph, pydensecrf.densecrf, safetensors
cuda = torch.cuda.is_available()
print(f"[install] torch {torch.__version__} ({'CUDA: ' + torch.cuda.get_device_name(0) if cuda else 'CPU'}), "
      f"opencv {cv2.__version__}, SQLAlchemy {sqlalchemy.__version__}, PySide6 {PySide6.__version__}")
PY
echo "$want" > "$stamp"
say "done. Start the demo with: .venv/bin/inspector --demo   Run the tests with: .venv/bin/python -m pytest"
