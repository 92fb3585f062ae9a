//! The `visiond` command line. Library errors become exit codes here: 2 for bad input
//! (configuration, arguments), 1 for failures at run time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use visiond::config::LogConfig;
use visiond::control::{ControlServer, signals};
use visiond::pipeline::engine::Engine;
use visiond::pipeline::stats::PipelineState;
use visiond::preflight;

/// How long the control plane may take to close its connections at exit.
const SERVER_STOP: Duration = Duration::from_secs(2);

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
    /// Measure the frame path: N synthetic streams through a model (or none) to a null sink or
    /// an encoder; per-stream and total frames/s, drops, latency, CPU and memory.
    Bench(Box<visiond::bench::streams::StreamsArgs>),
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
        Command::Bench(args) => bench(&args),
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

fn bench(args: &visiond::bench::streams::StreamsArgs) -> ExitCode {
    visiond::logging::init(&LogConfig {
        level: visiond::config::LogLevel::Warn,
        ..LogConfig::default()
    });
    match visiond::bench::streams::run(args) {
        Ok(report) if args.json => match serde_json::to_string_pretty(&report) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(1)
            }
        },
        Ok(report) => {
            print!("{}", visiond::bench::streams::render(args, &report));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

fn run(file: &std::path::Path) -> ExitCode {
    let config = match preflight::load(file) {
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
    // The control plane (HTTP server, signals) lives on a small tokio runtime of its own;
    // the frame path never runs on it.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("control")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the control plane runtime");
            return ExitCode::from(1);
        }
    };
    // Bound before any pipeline starts: a taken port fails the start, like the RTSP port.
    let listen = config.daemon.http.listen;
    let server = match runtime.block_on(ControlServer::bind(listen)) {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(address = %listen, %error, "cannot listen for the control plane");
            return ExitCode::from(1);
        }
    };
    let engine = match Engine::start(&config, &visiond::runtime::loader(&config)) {
        Ok(engine) => engine,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(async { signals::watch(engine.shutdown_handle()) }) {
        Ok(watch) => drop(runtime.spawn(watch)),
        Err(error) => tracing::error!(%error, "cannot watch SIGINT/SIGTERM"),
    }
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(server.serve(engine.view(), async move {
        let _ = stopped.await;
    }));
    let reports = engine.wait();
    // The server answers through the drain; it stops once every pipeline has.
    let _ = stop_server.send(());
    let stopped = runtime.block_on(async { tokio::time::timeout(SERVER_STOP, server).await });
    match stopped {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(%error, "control plane failed"),
        Ok(Err(error)) => tracing::warn!(%error, "control plane task failed"),
        Err(_) => tracing::warn!("control plane did not stop in time; closing it"),
    }
    runtime.shutdown_timeout(Duration::from_millis(100));
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

fn check(file: &std::path::Path) -> ExitCode {
    visiond::logging::init(&LogConfig::default());
    match preflight::load(file) {
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
