//! The `uem-proxy` command: parse the command line, load the configuration, run.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use uem_proxy::config::LogFormat;
use uem_proxy::record::line::held;
use uem_proxy::sandbox::{self, Role};
use uem_proxy::{Config, demo, healthcheck, listen, telemetry};

/// `eprintln!` that a closed standard error (its reader gone) cannot turn into a panic: the exit
/// code must still say what happened.
macro_rules! complain {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!`, likewise.
macro_rules! complain_part {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that a closed standard output (`| head -1`) cannot turn into a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!`, likewise.
macro_rules! say_part {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// A credential-injecting proxy for the Workspace ONE UEM REST API.
#[derive(Parser)]
#[command(name = "uem-proxy", version)]
struct Cli {
    #[command(flatten)]
    file: File,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Offered only by the commands that read it: `demo` and `sandbox` configure themselves.
#[derive(Args, Clone)]
struct File {
    /// TOML configuration file; environment variables override it. Also UEM_PROXY_CONFIG.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run(File),
    /// Print the effective configuration as JSON, secrets masked, and exit.
    Config(File),
    /// Check step by step whether this setup works: egress route, token service, credentials, API, role.
    Check(File),
    /// Exit 0 if a running proxy answers its health endpoint (for container health checks).
    Healthcheck {
        /// Address of the proxy; default: where `run` listens (UEM_PROXY_LISTEN, else the
        /// configuration file's listen, else UEM_PROXY_DEFAULTS's, else 127.0.0.1:8080).
        #[arg(long)]
        addr: Option<String>,
        /// Ask /_proxy/readyz instead: exit 0 only while the proxy holds a usable token.
        #[arg(long)]
        ready: bool,
        #[command(flatten)]
        file: File,
    },
    /// Serve a simulated UEM tenant (token service and API) for developing scripts offline.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Play several tenants (repeat the option): tenant NAME is under /NAME, with the client
        /// NAME-client / NAME-secret and data of its own.
        #[arg(long = "tenant", value_name = "NAME", value_parser = parse_tenant_name)]
        tenants: Vec<String>,
        #[command(flatten)]
        tenant: TenantArgs,
    },
    /// Start two sandbox tenants (prod, the default, and uat) and the proxy in front of them; print commands to try.
    Demo {
        /// Address of the proxy.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the sandbox tenant (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        sandbox_listen: SocketAddr,
        #[command(flatten)]
        tenant: TenantArgs,
    },
}

/// The simulated tenant's settings.
#[derive(Args)]
struct TenantArgs {
    /// The OAuth client ID the sandbox accepts.
    #[arg(long, default_value = "sandbox-client")]
    client_id: String,
    /// The OAuth client secret the sandbox accepts.
    #[arg(long, default_value = "sandbox-secret")]
    client_secret: String,
    /// Lifetime of issued tokens (short ones show refreshing at work), e.g. 60s, 1h.
    #[arg(long, value_parser = humantime::parse_duration)]
    token_lifetime: Option<Duration>,
    /// API calls a second before 429 answers; none when absent.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// The client's role: full, operator (everything but deletions and admins), read-only.
    #[arg(long, default_value = "operator", value_parser = parse_role)]
    role: Role,
    /// How many devices the tenant holds.
    #[arg(long, default_value_t = 300)]
    devices: usize,
    /// Seed of the generated data: the same seed, the same tenant.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_tenant_name(s: &str) -> Result<String, String> {
    if uem_proxy::config::tenants::valid_name(s) {
        Ok(s.to_owned())
    } else {
        Err("a tenant's name is 1 to 32 lower-case letters, digits and '-'".to_owned())
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("'{s}' is not one of full, operator, read-only"))
}

impl TenantArgs {
    fn options(self, default_lifetime: Duration) -> sandbox::Options {
        let mut options = sandbox::Options::new(&self.client_id, &self.client_secret);
        options.token_lifetime = self.token_lifetime.unwrap_or(default_lifetime);
        options.rate_limit = self.rate_limit;
        options.role = self.role;
        options.devices = self.devices;
        options.seed = self.seed;
        options
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let command = cli.command.unwrap_or(Command::Run(File { config: None }));
    let given = |file: &File| cli.file.config.clone().or_else(|| file.config.clone());
    if cli.file.config.is_some() && matches!(command, Command::Sandbox { .. } | Command::Demo { .. }) {
        complain!("uem-proxy: --config is for run, config, check and healthcheck; sandbox and demo read no file");
        return ExitCode::from(2);
    }
    let file_of =
        |file: &File| given(file).or_else(|| env.get("UEM_PROXY_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from));
    let load = |file: &File| {
        let mut config = Config::load(file_of(file).as_deref(), &|name| env.get(name).cloned())
            .inspect_err(|error| complain_part!("uem-proxy: {error}"))?;
        let unknown = uem_proxy::config::unknown_variables(env.keys().map(String::as_str));
        config.warnings.splice(0..0, unknown);
        Ok::<_, uem_proxy::config::ConfigError>(config)
    };
    match command {
        Command::Run(file) => match load(&file) {
            Ok(config) => {
                telemetry::init(config.log_format);
                listen::conns::raise_open_file_limit();
                block_on(async move {
                    let listener = listen::Listener::bind(&config.listen)
                        .await
                        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
                    uem_proxy::run(config, listener, listen::signal()).await.map_err(|e| e.to_string())
                })
            }
            Err(_) => ExitCode::from(2),
        },
        Command::Config(file) => match load(&file) {
            Ok(config) => {
                for warning in &config.warnings {
                    complain!("uem-proxy: warning: {warning}");
                }
                // Piped into `head`, the reader may leave early: that is no failure worth a panic.
                let text = serde_json::to_string_pretty(&config.summary()).expect("JSON");
                let _ = writeln!(std::io::stdout(), "{text}");
                ExitCode::SUCCESS
            }
            Err(_) => ExitCode::from(2),
        },
        Command::Check(file) => match load(&file) {
            Ok(config) => {
                let mut out = String::new();
                let failed = tokio::runtime::Runtime::new()
                    .map(|rt| rt.block_on(uem_proxy::check::run_all(&config, &mut out)))
                    .unwrap_or(Some("runtime"));
                say_part!("{out}");
                if failed.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
            }
            Err(_) => ExitCode::from(2),
        },
        Command::Healthcheck { addr, ready, file } => {
            // Needs only the address: a health check must not depend on secrets being readable.
            let addr = match addr {
                Some(addr) => addr,
                None => {
                    match uem_proxy::config::listen_for_probe(file_of(&file).as_deref(), &|n| env.get(n).cloned()) {
                        Ok(listen) => listen.to_string(),
                        Err(message) => {
                            complain!("uem-proxy: {message}");
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            let path = if ready { healthcheck::READY } else { healthcheck::LIVE };
            match healthcheck::check_path(&addr, path, Duration::from_secs(3)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    complain!("uem-proxy: unhealthy: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Sandbox { listen, tenants, tenant } => {
            telemetry::init(log_format(&env));
            let options = tenant.options(Duration::from_secs(3600));
            let mut names: Vec<String> = Vec::new();
            for name in tenants {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            let all: Vec<sandbox::Options> = if names.is_empty() {
                vec![options]
            } else {
                names.iter().enumerate().map(|(i, name)| options.tenant(name, i as u64)).collect()
            };
            block_on(async move {
                let listener = bind(listen).await?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                if all.len() == 1 && all[0].name.is_none() {
                    say!("uem-proxy sandbox: a simulated Workspace ONE UEM tenant");
                } else {
                    say!("uem-proxy sandbox: {} simulated Workspace ONE UEM tenants", all.len());
                }
                for options in &all {
                    let base = match &options.name {
                        Some(name) => format!("http://{addr}/{name}"),
                        None => format!("http://{addr}"),
                    };
                    if let Some(name) = &options.name {
                        say!("tenant {name}:");
                    }
                    say!("  API        {base}/api/");
                    say!("  token URL  {base}/connect/token");
                    say!(
                        "  client     {} / {}",
                        options.client_id,
                        secrecy::ExposeSecret::expose_secret(&options.client_secret)
                    );
                }
                say!("Press Ctrl-C to stop.");
                sandbox::serve_tenants(listener, all, listen::signal()).await.map_err(|e| e.to_string())
            })
        }
        Command::Demo { listen, sandbox_listen, tenant } => {
            telemetry::init(log_format(&env));
            let options = tenant.options(Duration::from_secs(60));
            block_on(async move {
                let proxy = bind(listen).await?;
                let sandbox = bind(sandbox_listen).await?;
                let mut stdout = std::io::stdout();
                demo::run(proxy, sandbox, options, listen::signal(), &mut stdout).await.map_err(|e| e.to_string())
            })
        }
    }
}

fn log_format(env: &HashMap<String, String>) -> LogFormat {
    let given = env.get("UEM_PROXY_LOG_FORMAT").filter(|f| !f.trim().is_empty()).cloned();
    let chosen = given.or_else(|| uem_proxy::config::default_of("log_format", &|n| env.get(n).cloned()));
    match chosen.map(|f| f.trim().to_ascii_lowercase()) {
        Some(f) if f == "json" => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Runs `work` on a multi-threaded runtime, or on this thread alone when `TOKIO_WORKER_THREADS`
/// asks for one worker (a sidecar on one core: no work stealing to pay for); an error is printed
/// and makes the exit code 1.
fn block_on(work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let one = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|n| n.trim() == "1");
    let mut builder =
        if one { tokio::runtime::Builder::new_current_thread() } else { tokio::runtime::Builder::new_multi_thread() };
    // A thread serving requests holds their access lines while it has work and writes them
    // together before it waits: under load, one write for many lines.
    builder.enable_all().on_thread_park(held::idle).on_thread_stop(held::release);
    let runtime = builder.build();
    let result = runtime.map_err(|e| format!("cannot start the runtime: {e}")).and_then(|rt| rt.block_on(work));
    // The runtime is gone (with the requests it dropped, whose lines this thread may hold).
    held::release();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            complain!("uem-proxy: {message}");
            ExitCode::FAILURE
        }
    }
}
