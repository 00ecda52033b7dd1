#!/usr/bin/env bash
# Builds the fuzz targets (cargo fuzz). The machine's toolchain is stable:
# RUSTC_BOOTSTRAP=1 lets it accept the -Z flags cargo fuzz passes.
# To fuzz for a while:  RUSTC_BOOTSTRAP=1 cargo fuzz run persona_file fuzz/corpus_seed -- -max_total_time=60
#                       RUSTC_BOOTSTRAP=1 cargo fuzz run http_request -- -max_total_time=60
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
RUSTC_BOOTSTRAP=1 cargo fuzz build --release
