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

# The fuzz targets (docs/fuzzing.md): build them all, run each for SECS seconds. Its own
# workspace under fuzz/, with its own target directory.
fuzz SECS="30" *TARGETS:
    fuzz/run.sh {{SECS}} {{TARGETS}}

# The README's dashboard screenshot, taken again by the browser test (cli/tests/demo.rs, a
# running demo in headless chromium): commit docs/img/dashboard.png when the page changes.
screenshot:
    WEFT_SYSTEM_TESTS=1 cargo test -p weft --test demo the_dashboard_in_a_real_browser
    cp target/tmp/dashboard.png docs/img/dashboard.png

# Everything CI runs, system tests included (needs root for some of them).
ci:
    bash .ci/run

# Every benchmark (release builds): the identity service, the control plane, the mesh
# (direct, weft and two HAProxies side by side; it needs the Debian package `haproxy`, or pass
# --no-peer) and, when run as root, transparent interception between two network namespaces
# (direct and weft; skipped otherwise, and the summary says so). Writes bench/results/<date>.json, <date>.md (the summary) and <date>.svg (the
# latency plot), and latest.md/latest.svg, which the README links. Then the outbound stack's
# benchmark (full against minimal stack) to bench/results/stack-<date>.json.
bench *FLAGS:
    cargo build --release -p weft -p weft-proxy -p weft-bench
    cargo run --release -p weft-bench -- all --out-dir bench/results {{FLAGS}}
    cargo run --release -p weft-bench -- stack --json bench/results/stack-$(date +%F).json

# The soak (release builds): 500 req/s for 30 minutes through the mesh while certificates
# rotate, routes and policies change and an endpoint comes and goes; writes
# bench/results/soak-<date>.{json,md,svg} and fails on a failed request or a memory drift over 5 %.
soak *FLAGS:
    cargo build --release -p weft -p weft-proxy -p weft-bench
    cargo run --release -p weft-bench -- soak --out-dir bench/results {{FLAGS}}

# The control plane at scale (release builds, needs etcd): 10,000 simulated proxies on two
# replicas over a three-member etcd; writes bench/results/scale-<date>.json.
bench-scale *FLAGS:
    cargo build --release -p weft -p weft-bench
    cargo run --release -p weft-bench -- scale --json bench/results/scale-$(date +%F).json {{FLAGS}}

# The main job: a local mesh.
demo:
    cargo run --release -p weft -- demo
