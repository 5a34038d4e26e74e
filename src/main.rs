//! The `tidings` server binary: `cargo run` serves on 127.0.0.1:8080 with data under ./data.

use std::path::PathBuf;

use clap::Parser;
use tidings::config::{Config, LogFormat, Overrides};
use tracing_subscriber::EnvFilter;

/// tidings: realtime chat and notification server.
///
/// Settings come from (lowest to highest precedence) defaults, the config file, TIDINGS_<SECTION>_<KEY>
/// environment variables and these flags. See tidings.example.toml for every setting.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A TOML config file.
    #[arg(long, short, env = "TIDINGS_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (server.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Where data is kept (store.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `tidings=debug` (log.level).
    #[arg(long)]
    log_level: Option<String>,
    /// `text` or `json` (log.format).
    #[arg(long)]
    log_format: Option<String>,
    /// Any setting as section.key=value; repeatable. E.g. --set limits.max_connections=50000
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Start every user's stream in a new epoch before serving: after restoring the store from a
    /// backup, so that clients resuming with positions of the lost events sync from 0 instead.
    #[arg(long)]
    new_stream_epoch: bool,
    /// Load and check the configuration (files it names are read; no network, no data touched),
    /// say what it sets up, and exit: 0 when a start would accept it.
    #[arg(long)]
    check_config: bool,
}

impl Args {
    fn overrides(&self) -> anyhow::Result<Overrides> {
        let mut values = Vec::new();
        let named = [
            ("server.listen", self.listen.clone()),
            ("store.data_dir", self.data_dir.as_ref().map(|p| p.display().to_string())),
            ("log.level", self.log_level.clone()),
            ("log.format", self.log_format.clone()),
        ];
        for (key, value) in named {
            if let Some(value) = value {
                values.push((key.to_owned(), value));
            }
        }
        for pair in &self.set {
            let (key, value) =
                pair.split_once('=').ok_or_else(|| anyhow::anyhow!("--set takes section.key=value, got {pair:?}"))?;
            values.push((key.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(Overrides { values })
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colours only for a terminal: a log file or pipeline gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("signal received");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args.config.as_deref(), std::env::vars(), &args.overrides()?)?;
    if args.check_config {
        let checked = tidings::server::check_config(&config)?;
        let source = args.config.as_ref().map_or("defaults".into(), |p| p.display().to_string());
        println!("configuration OK ({source}, with the environment and flags):");
        for line in checked {
            println!("  {line}");
        }
        return Ok(());
    }
    init_logging(&config);
    actix_web::rt::System::new().block_on(async move {
        if args.new_stream_epoch {
            let store = tidings::server::open_store(&config).await?;
            let epoch = store.rotate_stream_epochs().await?;
            store.close().await;
            tracing::info!(%epoch, "every stream starts a new epoch: resuming clients will sync from 0");
        }
        let running = tidings::server::start(config).await?;
        running.run_until(shutdown_signal()).await
    })
}
