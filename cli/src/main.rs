//! `weft`: one binary to run every mesh component and to operate the mesh.
//!
//! # Layout
//! - `main.rs`: the command tree; each subcommand hands off to the crate that owns it.
//! - [`admin`]: a plaintext `GET` on components' admin ports.
//! - [`check`]: `weft check`, health checks with what to fix.
//! - [`context`]: the running demo's mesh, which the operator commands use by default.
//! - [`dashboard`]: `weft dashboard`, the mesh live in a browser.
//! - [`demo`]: `weft demo`, a local mesh.
//! - [`init`]: `weft init`, the iptables rules that send a workload's traffic through its proxy.
//! - [`stat`]: `weft stat` and `weft routes`, golden signals from every proxy.
//! - [`token`]: `weft token create`.
//! - [`cert`]: `weft cert issue`.
//! - [`ca`]: `weft ca rotate issuer|anchor`, `weft ca status`.
//! - [`resources`]: `weft apply`, `weft get`, `weft delete`, through the control plane.
//! - [`run`]: `weft run`, an app with its sidecar: the proxy first, the app's exit code last.

mod admin;
mod ca;
mod cert;
mod check;
mod context;
mod dashboard;
mod demo;
mod init;
mod resources;
mod run;
mod stat;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "weft: a small, fast service mesh",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local mesh until Ctrl-C (or --duration).
    Demo(demo::DemoArgs),
    /// A demo workload (started by `weft demo`).
    #[command(hide = true)]
    DemoApp(demo::app::AppArgs),
    /// Run the identity service (the mesh CA).
    Identity(weft_identity::config::IdentityArgs),
    /// Run the control plane, or `check DIR` to validate resources without serving them.
    Policy(weft_policy::config::Cli),
    /// Run the sidecar proxy.
    Proxy(weft_proxy::config::ProxyArgs),
    /// Run an app with its sidecar: the proxy ready first, signals passed on, the app's exit
    /// code returned once the proxy drained.
    Run(run::RunArgs),
    /// Install the iptables rules that send this network namespace's TCP through the proxy.
    Init(init::InitArgs),
    /// Check the mesh's health and say what to fix.
    Check(check::CheckArgs),
    /// Golden signals per service (success rate, RPS, latency percentiles, mTLS share).
    Stat(stat::StatArgs),
    /// Golden signals per route rule of the calls to a service (per backend: --backends).
    Routes(stat::RoutesArgs),
    /// A live web dashboard: golden signals, charts, the service graph, denied requests.
    Dashboard(dashboard::DashboardArgs),
    /// Bootstrap tokens for workloads.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Certificates for workloads without a proxy.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Rotate the CA's issuer or trust anchor; show its state.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Create or change resources from YAML files, through the control plane (as an operator).
    Apply(resources::ApplyArgs),
    /// Show resources as the control plane stores them.
    Get(resources::GetArgs),
    /// Delete a resource, through the control plane (as an operator).
    Delete(resources::DeleteArgs),
}

fn main() -> ExitCode {
    demo::children::exit_with_parent_if_asked();
    let cli = Cli::parse();
    // The demo prints what happens itself; its components' logs would repeat it.
    let default_log = match cli.command {
        Command::Demo(_) => "warn",
        _ => weft_runtime::process::DEFAULT_LOG,
    };
    weft_runtime::process::init_tracing_with_default(default_log);
    match cli.command {
        Command::Demo(args) => report(demo::run(args)),
        Command::DemoApp(args) => report(demo::app::run(args)),
        Command::Identity(args) => weft_identity::config::run_main(args),
        Command::Policy(cli) => match cli.command {
            Some(weft_policy::config::Command::Check(args)) => {
                weft_policy::config::check_main(args)
            }
            None => weft_policy::config::run_main(cli.run),
        },
        Command::Proxy(args) => weft_proxy::run::run_main(args),
        Command::Run(args) => run::run(args),
        Command::Init(args) => report(init::run(args)),
        Command::Check(args) => match check::run(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => report(Err(e)),
        },
        Command::Stat(args) => report(stat::stat(args)),
        Command::Routes(args) => report(stat::routes(args)),
        Command::Dashboard(args) => report(dashboard::run(args)),
        Command::Token(cmd) => report(token::run(cmd)),
        Command::Cert(cmd) => report(cert::run(cmd)),
        Command::Ca(cmd) => report(ca::run(cmd)),
        Command::Apply(args) => report(resources::apply(args)),
        Command::Get(args) => report(resources::get(args)),
        Command::Delete(args) => report(resources::delete(args)),
    }
}

/// Prints a command's error the same way everywhere and turns it into an exit code.
fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of the whole command tree (unique argument ids, valid defaults),
    /// which it otherwise makes only when a command is parsed.
    #[test]
    fn the_command_tree_is_valid() {
        super::Cli::command().debug_assert();
    }
}
