#!/usr/bin/env bash
# Builds the fuzz targets (cargo fuzz). The machine's toolchain is stable:
# RUSTC_BOOTSTRAP=1 lets it accept the -Z flags cargo fuzz passes.
# To fuzz for a while:  RUSTC_BOOTSTRAP=1 cargo fuzz run persona_file fuzz/corpus_seed -- -max_total_time=60
#                       RUSTC_BOOTSTRAP=1 cargo fuzz run http_request -- -max_total_time=60
#                       RUSTC_BOOTSTRAP=1 cargo fuzz run history_csv -- -max_total_time=60
#                       RUSTC_BOOTSTRAP=1 cargo fuzz run gossip_packet -- -max_total_time=60
#                       RUSTC_BOOTSTRAP=1 cargo fuzz run signal_sources -- -max_total_time=60
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
# CI only needs the targets to build: an unoptimised build takes 1.5 min cold
# instead of 3.7. Fuzzing for real wants the optimised build (cargo fuzz run
# builds it): FUZZ_RELEASE=1 scripts/fuzz-build.sh.
if [ "${FUZZ_RELEASE:-}" = 1 ]; then
  RUSTC_BOOTSTRAP=1 cargo fuzz build --release
else
  RUSTC_BOOTSTRAP=1 cargo fuzz build --dev
fi
