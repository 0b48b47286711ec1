//! `weft-identity`: the identity service as its own binary (same as `weft identity`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = weft_identity::config::IdentityArgs::parse();
    weft_runtime::process::init_tracing();
    weft_identity::config::run_main(args)
}
