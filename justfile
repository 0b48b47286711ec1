# weft's everyday commands. `just --list` shows them.

# Format the workspace.
fmt:
    cargo fmt --all

# Formatting and lints, as CI runs them.
check:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# The test suite (the README's test command).
test:
    cargo test --workspace

# Everything CI runs, system tests included (needs root for some of them).
ci:
    bash .ci/run

# Benchmarks (release builds), results under bench/results/. The mesh benchmark compares weft
# with two HAProxies too: it needs the Debian package `haproxy` (or pass it --no-peer).
bench:
    mkdir -p bench/results
    cargo run --release -p weft-bench --bin identity-bench -- --json bench/results/identity-$(date +%F).json
    cargo run --release -p weft-bench --bin policy-bench -- --json bench/results/policy-$(date +%F).json
    cargo build --release -p weft -p weft-proxy -p weft-bench
    cargo run --release -p weft-bench -- mesh --json bench/results/mesh-$(date +%F).json
    cargo run --release -p weft-bench -- stack --json bench/results/stack-$(date +%F).json

# The main job: a local mesh.
demo:
    cargo run --release -p weft -- demo
