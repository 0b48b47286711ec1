//! `weft-policy`: the control plane as its own binary (same as `weft policy`;
//! `weft-policy check DIR` is `weft policy check DIR`).

use clap::Parser;
use weft_policy::config::{Cli, Command, check_main, run_main};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    weft_runtime::process::init_tracing();
    match cli.command {
        Some(Command::Check(args)) => check_main(args),
        None => run_main(cli.run),
    }
}
