#!/usr/bin/env bash
# Build the folder a GPU run carries (.device/, git-ignored, at most 64 MiB):
#
#   wheels/   Python packages the GPU machine's image lacks, for CPython 3.12 on manylinux
#             x86_64, each unpacked, slimmed and xz-compressed into <name>-<version>.tar.xz,
#             listed in wheels/manifest.json. Ray 2.60.0 goes without ray/jars, ray/rllib,
#             ray/serve, ray/llm and the dashboard's web client, its binaries stripped.
#             benchmarks/gpu_suite.py unpacks, as its first step, each one whose modules the
#             machine cannot import, and puts them on PYTHONPATH.
#   data/magnetic_tile/   a subset of the real data in MVTec layout (original files, byte for
#             byte): --train normal training images, --test test images spread over the
#             defect types with their masks. Data is never committed.
#
#   benchmarks/device/pack.sh [--out DIR] [--data DIR] [--train N] [--test N] [--no-scipy]
#
# Needs pip (PyPI reachable), unzip, strip and xz. --no-scipy leaves out scipy and
# scikit-learn (about 25 MB) for a machine that has them.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/.device
DATA=${RAYMAE_MAGNETIC_TILE:-$ROOT/../shared/data/magnetic_tile}
TRAIN=200
TEST=100
SCIPY=1
LIMIT=$((64 * 1024 * 1024))
PYTHON=${PYTHON:-python3}

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --train) TRAIN=$2; shift 2 ;;
    --test) TEST=$2; shift 2 ;;
    --no-scipy) SCIPY=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "pack.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# What the GPU image (Python 3.12, torch 2.11, torchvision, timm, numpy, pyarrow, pandas,
# grpcio, msgpack, protobuf, pyyaml, click, requests) lacks for raymae train / score / the
# benchmarks; versions as in the project's tested environment.
PACKAGES=(
  ray==2.60.0
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  tensorboardX==2.6.5
  pytorch-msssim==1.0.0
)
if [ "$SCIPY" = 1 ]; then
  PACKAGES+=(scipy==1.17.1 scikit-learn==1.9.1 joblib==1.6.0 threadpoolctl==3.8.0)
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/raymae-pack.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$WORK/download"

echo "downloading ${#PACKAGES[@]} wheels for cp312 manylinux x86_64"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --dest "$WORK/download" "${PACKAGES[@]}"

for wheel in "$WORK"/download/*.whl; do
  base=$(basename "$wheel")
  name=${base%%-*}
  version=$(echo "$base" | cut -d- -f2)
  tree="$WORK/tree/$name"
  mkdir -p "$tree"
  unzip -q "$wheel" -d "$tree"
  if [ "$name" = ray ]; then
    rm -rf "$tree"/ray/jars "$tree"/ray/rllib "$tree"/ray/serve "$tree"/ray/llm "$tree"/ray/dashboard/client
  fi
  find "$tree" -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
  # symbol tables of the shared libraries and executables (their dynamic symbols stay)
  find "$tree" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print0 |
    while IFS= read -r -d '' f; do
      if head -c 4 "$f" | grep -q ELF; then strip --strip-unneeded "$f" 2>/dev/null || true; fi
    done
  tar -C "$tree" -cf - . | xz -6 -T0 > "$OUT/wheels/$name-$version.tar.xz"
  echo "  $name $version: $(du -h "$OUT/wheels/$name-$version.tar.xz" | cut -f1)"
done

# manifest: which archive brings which importable top-level modules
"$PYTHON" - "$WORK/tree" "$OUT/wheels" <<'PY'
import json, os, sys
trees, wheels = sys.argv[1], sys.argv[2]
entries = []
for archive in sorted(os.listdir(wheels)):
    name, version = archive[:-len(".tar.xz")].rsplit("-", 1)
    top = sorted({p[:-3] if p.endswith(".py") else p for p in os.listdir(os.path.join(trees, name))
                  if not p.endswith((".dist-info", ".data", ".libs")) and p != "__pycache__"})
    entries.append({"name": name, "version": version, "archive": archive,
                    "modules": [m for m in top if m.isidentifier()],
                    "bytes": os.path.getsize(os.path.join(wheels, archive))})
json.dump({"python": "3.12", "platform": "manylinux x86_64", "packages": entries},
          open(os.path.join(wheels, "manifest.json"), "w"), indent=1)
PY

if [ "$TRAIN" -gt 0 ] || [ "$TEST" -gt 0 ]; then
  [ -d "$DATA/train/good" ] || { echo "pack.sh: no magnetic tile data at $DATA (--data)" >&2; exit 2; }
  dest="$OUT/data/magnetic_tile"
  mkdir -p "$dest/train/good"
  # every k-th file in name order, so the subset spreads over the whole set
  pick() { local n=$1; shift; local all=("$@"); local total=${#all[@]}
           [ "$n" -ge "$total" ] && { printf '%s\n' "${all[@]}"; return; }
           for ((i = 0; i < n; i++)); do printf '%s\n' "${all[$((i * total / n))]}"; done; }
  mapfile -t train < <(ls "$DATA/train/good")
  pick "$TRAIN" "${train[@]}" | while read -r f; do cp "$DATA/train/good/$f" "$dest/train/good/"; done
  total_test=$(find "$DATA/test" -type f | wc -l)
  for dir in "$DATA"/test/*/; do
    kind=$(basename "$dir")
    mapfile -t files < <(ls "$dir")
    n=$(( (${#files[@]} * TEST + total_test - 1) / total_test ))
    mkdir -p "$dest/test/$kind"
    pick "$n" "${files[@]}" | while read -r f; do
      cp "$dir/$f" "$dest/test/$kind/"
      if [ "$kind" != good ]; then
        mkdir -p "$dest/ground_truth/$kind"
        cp "$DATA/ground_truth/$kind/${f%.*}_mask.png" "$dest/ground_truth/$kind/"
      fi
    done
  done
  echo "data: $(find "$dest/train" -type f | wc -l) train, $(find "$dest/test" -type f | wc -l) test images ($(du -sh "$dest" | cut -f1))"
fi

bytes=$(du -sb "$OUT" | cut -f1)
echo "$OUT: $bytes bytes ($((bytes / 1024 / 1024)) MiB of at most 64)"
if [ "$bytes" -gt "$LIMIT" ]; then
  echo "pack.sh: $OUT is over 64 MiB: a GPU run cannot carry it (--test/--train fewer, or --no-scipy)" >&2
  exit 1
fi
