//! The `visiond` command line. Library errors become exit codes here: 2 for bad input
//! (configuration, arguments), 1 for failures at run time.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tokio::signal::unix::{SignalKind, signal};
use visiond::config::{Config, LogConfig};
use visiond::pipeline::engine::{Engine, ShutdownHandle};
use visiond::pipeline::stats::PipelineState;

#[derive(Parser)]
#[command(name = "visiond", version, about = "Vision transformers on live video")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model once on an image or a preprocessed tensor, print a summary of its output,
    /// optionally write the annotated frame (--overlay) and the tensors (--save).
    Infer(Box<visiond::infer::InferArgs>),
    /// Validate the daemon file and every pipeline file; print all errors at once.
    Check {
        /// The daemon file.
        #[arg(short, long, default_value = "/etc/visiond/visiond.yaml")]
        config: PathBuf,
    },
    /// Run every pipeline until finite sources end or SIGINT/SIGTERM drains them.
    Run {
        /// The daemon file.
        #[arg(short, long, default_value = "/etc/visiond/visiond.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Infer(args) => infer(&args),
        Command::Run { config } => run(&config),
    }
}

fn infer(args: &visiond::infer::InferArgs) -> ExitCode {
    visiond::logging::init(&LogConfig {
        level: visiond::config::LogLevel::Warn,
        ..LogConfig::default()
    });
    let mut stdout = std::io::stdout().lock();
    match visiond::infer::run(args, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(file: &std::path::Path) -> ExitCode {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s); not starting", errors.0.len());
            return ExitCode::from(2);
        }
    };
    visiond::logging::init(&config.daemon.log);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let engine = match Engine::start(&config, &visiond::pipeline::inference::factory(&config)) {
        Ok(engine) => engine,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::from(1);
        }
    };
    watch_signals(engine.shutdown_handle());
    let reports = engine.wait();
    // The summary goes to stderr: stdout may carry jsonl metadata.
    eprintln!("summary:");
    for report in &reports {
        eprintln!("  {report}");
    }
    if reports.iter().all(|r| r.state == PipelineState::Finished) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// SIGINT/SIGTERM start a drain (bounded by `shutdown.grace_ms`); a second one exits at once.
/// Signals are control plane: they live on a small tokio runtime, not on the frame path.
fn watch_signals(shutdown: ShutdownHandle) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "cannot watch signals");
                    return;
                }
            };
            runtime.block_on(async {
                let Ok(mut terminate) = signal(SignalKind::terminate()) else {
                    tracing::error!("cannot watch SIGTERM");
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                tracing::info!("shutdown requested; draining (a second signal exits at once)");
                shutdown.trigger();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                tracing::warn!("second signal; exiting without draining");
                std::process::exit(130);
            });
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the signal thread");
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    visiond::logging::init(&LogConfig::default());
    match Config::load(file) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            let names: Vec<&str> = config
                .pipelines
                .iter()
                .map(|p| p.config.name.as_str())
                .collect();
            println!(
                "{}: OK: {} model(s), {} pipeline(s){}",
                visiond::config::paths::display(file),
                config.daemon.models.len(),
                names.len(),
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", names.join(", "))
                }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            eprintln!("{} error(s); configuration not valid", errors.0.len());
            ExitCode::from(2)
        }
    }
}
