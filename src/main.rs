//! The `uem-proxy` command: parse the command line, load the configuration, run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use uem_proxy::{Config, healthcheck, server, telemetry};

/// A credential-injecting proxy for the Workspace ONE UEM REST API.
#[derive(Parser)]
#[command(name = "uem-proxy", version)]
struct Cli {
    /// TOML configuration file; environment variables override it. Also UEM_PROXY_CONFIG.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Print the effective configuration as JSON, secrets masked, and exit.
    Config,
    /// Exit 0 if a running proxy answers its health endpoint (for container health checks).
    Healthcheck {
        /// Address of the proxy; default: UEM_PROXY_LISTEN, else 127.0.0.1:8080.
        #[arg(long)]
        addr: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    if let Some(Command::Healthcheck { addr }) = &cli.command {
        // Needs only the address: a health check must not depend on secrets being readable.
        let addr = addr
            .clone()
            .or_else(|| env.get("UEM_PROXY_LISTEN").cloned());
        let addr = addr.unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        return match healthcheck::check(&addr, std::time::Duration::from_secs(3)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("uem-proxy: unhealthy: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let file = cli.config.or_else(|| {
        env.get("UEM_PROXY_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let config = match Config::load(file.as_deref(), &|name| env.get(name).cloned()) {
        Ok(config) => config,
        Err(error) => {
            eprint!("uem-proxy: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Config => {
            println!(
                "{}",
                serde_json::to_string_pretty(&config.summary()).expect("JSON")
            );
            ExitCode::SUCCESS
        }
        Command::Run => run(config),
        Command::Healthcheck { .. } => unreachable!("handled before loading the configuration"),
    }
}

fn run(config: Config) -> ExitCode {
    telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("uem-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("uem-proxy: cannot listen on {}: {error}", config.listen);
                return ExitCode::FAILURE;
            }
        };
        match uem_proxy::run(config, listener, server::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("uem-proxy: {error}");
                ExitCode::FAILURE
            }
        }
    })
}
