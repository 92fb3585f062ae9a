//! The `visiond` command line. Library errors become exit codes here: 2 for bad input
//! (configuration, arguments), 1 for failures at run time.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use visiond::config::{Config, LogConfig};

#[derive(Parser)]
#[command(name = "visiond", version, about = "Vision transformers on live video")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model once on a preprocessed tensor and print a summary of its output.
    Infer(visiond::infer::InferArgs),
    /// Validate the daemon file and every pipeline file; print all errors at once.
    Check {
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
