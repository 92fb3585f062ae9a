//! The `visiond` command line. Library errors become exit codes here: 2 for bad input
//! (configuration, arguments), 1 for failures at run time.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use visiond::config::LogConfig;
use visiond::{daemon, preflight};

/// `visiond 0.1.0 (commit 1a2b3c4d5e6f)`: the commit from build.rs (`unknown` outside a git
/// checkout), as the `visiond_build_info` metric's `commit` label carries it.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("VISIOND_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "visiond",
    version = VERSION,
    about = "Vision transformers on live video"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model once on an image or a preprocessed tensor, print a summary of its output,
    /// optionally write the annotated frame (--overlay) and the tensors (--save).
    Infer(Box<visiond::infer::InferArgs>),
    /// Time a model's forward per dtype and batch size (--model: ms per batch, images/s,
    /// GFLOP/s), or the whole frame path on N synthetic streams (--streams: frames/s per
    /// stream and in total, drops, latency, CPU, memory).
    Bench(Box<visiond::bench::BenchArgs>),
    /// Validate the daemon file and every pipeline file; print all errors at once.
    Check {
        /// The daemon file.
        #[arg(short, long, default_value = "/etc/visiond/visiond.yaml")]
        config: PathBuf,
        /// Also connect: ask each served model's server (`remote`) whether it is ready and
        /// whether the model's inputs and outputs fit its processor (ServerReady, ModelMetadata,
        /// ModelReady), and connect to every broker under `brokers` once (with its credentials
        /// and TLS). Without it nothing is connected to.
        #[arg(long)]
        probe: bool,
    },
    /// Run every pipeline until finite sources end or SIGINT/SIGTERM drains them.
    Run {
        /// The daemon file.
        #[arg(short, long, default_value = "/etc/visiond/visiond.yaml")]
        config: PathBuf,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (visiond.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Manpages {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // Before any thread (libtorch's, GStreamer's, tokio's) exists.
    visiond::control::process::bound_malloc_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, probe } => check(&config, probe),
        Command::Infer(args) => infer(&args),
        Command::Bench(args) => bench(&args),
        Command::Run { config } => run(&config),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "visiond",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Manpages { dir } => manpages(&dir),
    }
}

/// The man pages come from the same definition as `--help`, so they never drift apart.
fn manpages(dir: &std::path::Path) -> ExitCode {
    let written =
        std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "error: cannot write manual pages into {}: {error}",
                dir.display()
            );
            ExitCode::from(1)
        }
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

fn bench(args: &visiond::bench::BenchArgs) -> ExitCode {
    visiond::logging::init(&LogConfig {
        level: visiond::config::LogLevel::Warn,
        ..LogConfig::default()
    });
    let mut stdout = std::io::stdout().lock();
    match visiond::bench::run(args, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(file: &std::path::Path) -> ExitCode {
    match daemon::run(file) {
        daemon::Outcome::InvalidConfig(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s); not starting", errors.0.len());
            ExitCode::from(2)
        }
        daemon::Outcome::Refused(reason) => {
            eprintln!("{reason}");
            eprintln!("not starting");
            ExitCode::from(2)
        }
        daemon::Outcome::CannotStart => ExitCode::from(1),
        daemon::Outcome::Ran(reports) => {
            // The summary goes to stderr: stdout may carry jsonl metadata.
            eprintln!("summary:");
            for report in &reports {
                eprintln!("  {report}");
            }
            if daemon::all_finished(&reports) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// `visiond check --probe`: one line per broker; exit 1 when one could not be reached.
fn probe_brokers(config: &visiond::config::Config) -> ExitCode {
    let mut failed = 0;
    for (name, outcome) in visiond::publish::probe(config) {
        match outcome {
            Ok(found) => println!("  broker {name}: {found}"),
            Err(error) => {
                failed += 1;
                eprintln!("broker {name}: cannot connect: {error}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} broker(s) could not be reached");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn check(file: &std::path::Path, probe: bool) -> ExitCode {
    visiond::logging::init(&LogConfig::default());
    match preflight::load(file) {
        Ok(config) => {
            let limit = preflight::limits::raise_descriptor_limit();
            if let Err(error) = preflight::limits::check_descriptors(&config, limit) {
                eprintln!("{}: {error}", visiond::config::paths::display(file));
                eprintln!("1 error(s); configuration not valid");
                return ExitCode::from(2);
            }
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
            for line in preflight::model_summaries(&config) {
                println!("{line}");
            }
            if probe {
                let failures = preflight::probe(&config);
                if !failures.is_empty() {
                    for failure in &failures {
                        eprintln!("{failure}");
                    }
                    eprintln!("{} error(s); served model(s) not usable", failures.len());
                    return ExitCode::from(2);
                }
            }
            for pipeline in &config.pipelines {
                let encoder = &pipeline.config.encoder.element;
                let chosen = visiond::media::registry::resolve_encoder(encoder)
                    .unwrap_or_else(|| "none".to_string());
                let how = if encoder == visiond::config::AUTO_ENCODER {
                    " (auto)"
                } else {
                    ""
                };
                println!("  {}: encoder {chosen}{how}", pipeline.config.name);
            }
            if probe {
                return probe_brokers(&config);
            }
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
