//! `loom-sidecar`: run the pipeline, or `validate` / `print-config` a configuration file.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loom_sidecar::service;
use loom_sidecar::Config;

/// OpenTelemetry-Collector-style trace pipeline for Loom: OTLP in, sample, enrich, batch, export.
#[derive(Debug, Parser)]
#[command(name = "loom-sidecar", version)]
struct Cli {
    /// Config file (YAML, Collector shape). Default: $LOOM_SIDECAR_CONFIG, else configs/sidecar.yaml.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file without starting anything.
    Validate,
    /// Print the config with environment variables expanded and secrets redacted.
    PrintConfig,
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("LOOM_SIDECAR_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("configs/sidecar.yaml"))
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    loom_sidecar::load_file(path).map_err(|errs| {
        eprintln!("loom-sidecar: invalid configuration {}:", path.display());
        for e in &errs.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = config_path(&cli);
    // Read before loading: the file watch reloads on any change after this.
    let loaded = std::fs::read(&path).ok();
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Some(Command::Validate) => {
            println!("config OK: {}", path.display());
            return ExitCode::SUCCESS;
        }
        Some(Command::PrintConfig) => {
            print!("{}", config.redacted_yaml());
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(&config.service.telemetry.logs.level)
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loom-sidecar: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let hangup = service::Hangup::install();
        let running = match service::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("loom-sidecar: {e}");
                return ExitCode::from(1);
            }
        };
        // Tests and the runner read these lines to find the (possibly port-0) listeners.
        let mut out = std::io::stdout().lock();
        for l in &running.listening {
            let _ = writeln!(out, "listening {} {} {}", l.component, l.kind, l.addr);
        }
        let _ = writeln!(out, "ready");
        let _ = out.flush();
        drop(out);
        tracing::info!(config = %path.display(), pid = std::process::id(), "loom-sidecar running");
        // SIGHUP (and, with service.reload.watch, a changed file) reloads in place.
        let running = service::serve(running, path, loaded, hangup).await;
        tracing::info!("shutting down: draining pipelines");
        if running.shutdown().await {
            tracing::info!("loom-sidecar stopped");
        }
        ExitCode::SUCCESS
    })
}
