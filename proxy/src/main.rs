//! `weft-proxy`: the sidecar as its own binary (same as `weft proxy`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = weft_proxy::config::ProxyArgs::parse();
    weft_runtime::process::init_tracing();
    weft_proxy::run::run_main(args)
}
