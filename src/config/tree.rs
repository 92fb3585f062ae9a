//! The whole configuration: the daemon file and its pipeline files, and what reading them found.

use std::path::PathBuf;

use super::daemon::{DAEMON_KEYS, DaemonConfig};
use super::error::{ConfigError, ConfigErrors, Unreadable, sort_for_reading};
use super::paths;
use super::pipeline::{PIPELINE_KEYS, PipelineConfig};

/// A whole configuration: the daemon file and its pipelines, every value parsed into its type
/// and checked for shape. What the machine can do (files, models, GStreamer elements) is the
/// preflight's to check (`crate::preflight::load` does both).
#[derive(Debug, Clone)]
pub struct Config {
    /// The daemon file as given.
    pub file: PathBuf,
    pub daemon: DaemonConfig,
    pub pipelines: Vec<PipelineFile>,
    /// Things that will work but probably were not meant (an unused model, say).
    pub warnings: Vec<ConfigError>,
}

#[derive(Debug, Clone)]
pub struct PipelineFile {
    pub file: PathBuf,
    pub config: PipelineConfig,
}

/// What reading a configuration found. `config` is there whenever the daemon file could be
/// read at all, even with errors, so that later checks still run and report in the same pass.
#[derive(Debug)]
pub struct Reading {
    pub config: Option<Config>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
    /// Keys read with a stand-in in place of what was written (already reported).
    pub(super) unreadable: Unreadable,
}

impl Reading {
    /// The configuration when nothing is wrong, else every error in reading order.
    pub fn finish(self) -> Result<Config, ConfigErrors> {
        let mut errors = self.errors;
        self.unreadable.drop_stand_in_errors(&mut errors);
        match self.config {
            Some(config) if errors.is_empty() => Ok(Config {
                warnings: self.warnings,
                ..config
            }),
            config => {
                let daemon_file = config.map(|c| paths::display(&c.file)).unwrap_or_default();
                let sections: Vec<&str> =
                    DAEMON_KEYS.iter().chain(PIPELINE_KEYS).copied().collect();
                sort_for_reading(&mut errors, &daemon_file, &sections);
                Err(ConfigErrors(errors))
            }
        }
    }
}

impl Config {
    pub fn pipeline(&self, name: &str) -> Option<&PipelineFile> {
        self.pipelines.iter().find(|p| p.config.name == name)
    }
}
