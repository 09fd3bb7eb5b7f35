#!/usr/bin/env bash
# Here (the CPU machine), in the repository root, before `device run: bash benchmarks/gpu_check.sh`:
# the shared fetch-wheels.sh, plus the wheels it lacked on the H200 on 2026-12-04 (each stopped the
# import of avalanche at the first try): beautifulsoup4 + soupsieve (gdown imports bs4), GPUtil
# (Avalanche's gpu_usage metric imports it; PyPI has only an sdist, so it is built into a wheel
# here) and two opentelemetry packages that wandb 0.31 requires. About 47 MB in .whl/.
set -euo pipefail
bash ../shared/tools/gpu/fetch-wheels.sh "$@"
P=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
   --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl)
python3 -m pip download -q "${P[@]}" beautifulsoup4 soupsieve opentelemetry-exporter-http-transport \
    opentelemetry-exporter-otlp-common 2>&1 | grep -v '^WARNING' || true
python3 -m pip wheel -q --no-deps -w .whl gputil==1.4.0 2>&1 | grep -v '^WARNING' || true
mkdir -p .gpudata && grep -qx '/.gpudata/' .git/info/exclude || echo '/.gpudata/' >> .git/info/exclude
[ -d .gpudata/omniglot ] || cp -r "${AVALANCHE_FSCL_DATA:-../shared/data}/omniglot" .gpudata/
du -sh .whl .gpudata
