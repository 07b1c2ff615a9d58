//! `vmpathctl`: the command-line client of vmpathd's JSON-RPC 2.0 socket.
//!
//! Every RPC is a subcommand named like the method (SPDK's `object_verb` names, e.g.
//! `bdev_malloc_create`; `bdev-malloc-create` works too), with `--help`. Results are shown
//! as tables by default, or as raw JSON with `--json` (for scripts). `call METHOD [PARAMS]`
//! reaches any method. Errors go to standard error and the exit code is 1 (2 for a bad
//! command line).

mod commands;
mod format;
mod nvme_commands;
mod nvmf_commands;
mod vm_commands;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vmpath_config::DEFAULT_RPC_SOCKET;
use vmpath_mgmt::{ClientError, RpcClient};

use crate::commands::{pretty, Command, CommandError};

/// Control a running vmpathd through its JSON-RPC socket.
#[derive(Debug, Parser)]
#[command(name = "vmpathctl", version, about, long_about = None)]
struct Cli {
    /// Path of vmpathd's JSON-RPC socket
    #[arg(
        short = 'r',
        long = "rpc-socket",
        short_alias = 's',
        value_name = "PATH",
        env = "VMPATH_RPC_SOCKET",
        default_value = DEFAULT_RPC_SOCKET,
        global = true
    )]
    rpc_socket: PathBuf,

    /// Print the raw JSON result instead of a table
    #[arg(long, global = true)]
    json: bool,

    /// Seconds to wait for the daemon's answer (0 = wait forever)
    #[arg(short = 't', long, value_name = "SECS", default_value = "60", value_parser = parse_timeout, global = true)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is not a valid timeout"))
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{method}: {source}")]
    Call {
        method: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn run(cli: &Cli) -> Result<(), CliError> {
    let (method, params) = cli.command.request()?;
    let mut client = RpcClient::connect(&cli.rpc_socket)?;
    let timeout = (!cli.timeout.is_zero()).then_some(cli.timeout);
    client.set_timeout(timeout)?;
    let result = client
        .call(&method, params)
        .map_err(|source| CliError::Call {
            method: method.clone(),
            source,
        })?;
    let text = if cli.json {
        pretty(&result)
    } else {
        cli.command.render(&result).unwrap_or_else(|e| {
            eprintln!("vmpathctl: warning: {e}; showing the raw result");
            pretty(&result)
        })
    };
    if let Command::SaveConfig {
        output: Some(path), ..
    } = &cli.command
    {
        std::fs::write(path, &text).map_err(|source| CliError::Write {
            path: path.clone(),
            source,
        })?;
        eprintln!("vmpathctl: configuration written to {}", path.display());
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`vmpathctl ... | head`) is not an error worth reporting.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmpathctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn spdk_and_kebab_names_parse() {
        for argv in [
            ["vmpathctl", "bdev_get_bdevs", "-b", "M"],
            ["vmpathctl", "bdev-get-bdevs", "-b", "M"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert!(matches!(cli.command, Command::BdevGetBdevs { name: Some(ref n) } if n == "M"));
        }
        let cli = Cli::try_parse_from(["vmpathctl", "version", "--json", "-r", "/x.sock"]).unwrap();
        assert!(matches!(cli.command, Command::VmpathGetVersion));
        assert!(cli.json);
        assert_eq!(cli.rpc_socket, PathBuf::from("/x.sock"));
        let cli =
            Cli::try_parse_from(["vmpathctl", "-s", "/y.sock", "vmpath-get-version"]).unwrap();
        assert_eq!(cli.rpc_socket, PathBuf::from("/y.sock"));
        let cli = Cli::try_parse_from(["vmpathctl", "bdev_malloc_create", "-b", "M", "64", "4096"])
            .unwrap();
        assert_eq!(cli.timeout, Duration::from_secs(60));
        assert!(Cli::try_parse_from(["vmpathctl", "bdev_frob"]).is_err());
        assert!(Cli::try_parse_from(["vmpathctl", "-t", "-1", "version"]).is_err());
    }
}
