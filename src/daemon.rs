//! `visiond run`: the configuration, the engine, the control plane, signals and systemd, and the
//! loop that owns the engine: it applies reloads (SIGHUP) and pipeline writes (HTTP) one at a
//! time, and ends when every pipeline has finished or a shutdown has drained them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::config::{Config, ConfigErrors, FileErrors, Overlay, paths};
use crate::control::requests::{Answer, Request, Requests};
use crate::control::systemd::{self, Notifier};
use crate::control::{Api, ControlServer, Writes, signals};
use crate::pipeline::engine::Engine;
use crate::pipeline::plan::Changes;
use crate::pipeline::stats::PipelineState;
use crate::pipeline::view::PipelineReport;
use crate::preflight;
use crate::runtime;

/// How long the control plane may take to close its connections at exit.
const SERVER_STOP: Duration = Duration::from_secs(2);

/// How often the loop looks whether every pipeline has finished, between requests.
const FINISHED_POLL: Duration = Duration::from_millis(100);

/// How often the loop hands the heap's free pages back to the kernel (see
/// `process::return_free_memory`).
const HEAP_TRIM: Duration = Duration::from_secs(60);

/// Why `visiond run` ended, for its exit code: 2 for a configuration that does not validate
/// or that this machine cannot hold, 1 when it could not start or a pipeline did not finish
/// well, 0 otherwise.
pub enum Outcome {
    InvalidConfig(ConfigErrors),
    /// Valid, but refused here (more file descriptors than the limit allows, say).
    Refused(String),
    CannotStart,
    Ran(Vec<PipelineReport>),
}

/// Runs `file` until its pipelines finish or a shutdown has drained them.
pub fn run(file: &Path) -> Outcome {
    let config = match preflight::load(file) {
        Ok(config) => config,
        Err(errors) => return Outcome::InvalidConfig(errors),
    };
    crate::logging::init(&config.daemon.log);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let limit = preflight::limits::raise_descriptor_limit();
    if let Err(error) = preflight::limits::check_descriptors(&config, limit) {
        return Outcome::Refused(error);
    }
    // The control plane (HTTP server, signals, systemd) lives on a small tokio runtime of its
    // own; the frame path never runs on it.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("control")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the control plane runtime");
            return Outcome::CannotStart;
        }
    };
    // Bound before any pipeline starts: a taken port fails the start, like the RTSP port.
    let listen = config.daemon.http.listen;
    let server = match runtime.block_on(ControlServer::bind(listen)) {
        Ok(server) => server.configure(&config.daemon.http),
        Err(error) => {
            tracing::error!(address = %listen, %error, "cannot listen for the control plane");
            return Outcome::CannotStart;
        }
    };
    let control = Control::start(&runtime, &config);
    tracing::info!(pipelines = config.pipelines.len(), "starting pipelines");
    let engine = match Engine::start(&config, &runtime::loader(&config)) {
        Ok(engine) => engine,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return Outcome::CannotStart;
        }
    };
    control.stop.attach(engine.shutdown_handle());
    let daemon = Daemon::new(file, config, engine, control.notifier.clone());
    let reports = serve(daemon, server, &runtime, control);
    runtime.shutdown_timeout(Duration::from_millis(100));
    Outcome::Ran(reports)
}

/// The control plane's side of the daemon, set up before the pipelines start: signals (so a
/// start that hangs still ends within the grace period and its margin), systemd, requests.
struct Control {
    stop: signals::Stop,
    notifier: Option<Arc<Notifier>>,
    requests: Requests,
    incoming: Receiver<Request>,
}

impl Control {
    fn start(runtime: &tokio::runtime::Runtime, config: &Config) -> Self {
        let (requests, incoming) = Requests::new();
        let notifier = Notifier::from_env().map(Arc::new);
        let stop = signals::Stop::default();
        let grace = Duration::from_millis(config.daemon.shutdown.grace_ms);
        let listeners = signals::Listeners {
            notifier: notifier.clone(),
            requests: requests.clone(),
        };
        match runtime.block_on(async { signals::watch(stop.clone(), grace, listeners) }) {
            Ok(watch) => drop(runtime.spawn(watch)),
            Err(error) => tracing::error!(%error, "cannot watch signals"),
        }
        Self {
            stop,
            notifier,
            requests,
            incoming,
        }
    }
}

/// Serves the control plane around `daemon`, runs its loop, then stops the server.
fn serve(
    mut daemon: Daemon,
    server: ControlServer,
    runtime: &tokio::runtime::Runtime,
    control: Control,
) -> Vec<PipelineReport> {
    let view = daemon.engine.view();
    if let Some(notifier) = &control.notifier {
        notifier.send(&format!(
            "READY=1\nSTATUS={}",
            systemd::status_line(&view.current())
        ));
        let watchdog = systemd::watchdog_interval();
        drop(runtime.spawn(systemd::supervise(notifier.clone(), view.clone(), watchdog)));
    }
    let writes = daemon
        .config
        .daemon
        .http
        .token_file
        .clone()
        .map(|token_file| Writes {
            requests: control.requests.clone(),
            token_file,
        });
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let api = Api {
        view,
        writes,
        live: crate::control::live::Live::new(crate::control::live::LiveSettings::of(
            &daemon.config.daemon.http,
        )),
    };
    let server = runtime.spawn(server.serve(api, async move {
        let _ = stopped.await;
    }));
    daemon.run(&control.incoming);
    // The server answers through the drain; it stops once every pipeline has.
    let _ = stop_server.send(());
    let stopped = runtime.block_on(async { tokio::time::timeout(SERVER_STOP, server).await });
    match stopped {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(%error, "control plane failed"),
        Ok(Err(error)) => tracing::warn!(%error, "control plane task failed"),
        Err(_) => tracing::warn!("control plane did not stop in time; closing it"),
    }
    daemon.engine.wait()
}

/// The engine and what it was started from.
struct Daemon {
    file: PathBuf,
    config: Config,
    engine: Engine,
    notifier: Option<Arc<Notifier>>,
}

impl Daemon {
    fn new(file: &Path, config: Config, engine: Engine, notifier: Option<Arc<Notifier>>) -> Self {
        Self {
            file: file.to_path_buf(),
            config,
            engine,
            notifier,
        }
    }

    /// Answers requests until the pipelines are done: all finished by themselves (a daemon
    /// with no pipeline at all waits for one to be added), or all stopped by a shutdown.
    fn run(&mut self, requests: &Receiver<Request>) {
        let mut trimmed_at = std::time::Instant::now();
        loop {
            if trimmed_at.elapsed() >= HEAP_TRIM {
                trimmed_at = std::time::Instant::now();
                let released = crate::control::process::return_free_memory();
                tracing::debug!(released_bytes = released, "returned free heap pages");
            }
            let shutting_down = self.engine.shutdown_handle().is_triggered();
            let idle = self.engine.pipeline_count() == 0 && !shutting_down;
            if self.engine.all_finished() && !idle {
                return;
            }
            match requests.recv_timeout(FINISHED_POLL) {
                Ok(_) if shutting_down => {}
                Ok(request) => self.handle(request),
                Err(_) => {}
            }
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Reload { reply } => {
                let answer = self.apply(&Overlay::new(), false);
                if let Some(reply) = reply {
                    let _ = reply.send(answer);
                }
            }
            Request::Put { name, body, reply } => {
                let _ = reply.send(self.put(&name, &body));
            }
            Request::Delete { name, reply } => {
                let _ = reply.send(self.delete(&name));
            }
        }
    }

    /// Re-reads every file (with `overlay` applied), and applies it when valid; an invalid
    /// configuration is refused whole and the running one stays.
    fn apply(&mut self, overlay: &Overlay, created: bool) -> Answer {
        self.notify("RELOADING=1");
        let answer = match preflight::load_with(&self.file, overlay) {
            Err(errors) => {
                for error in &errors.0 {
                    tracing::error!("{error}");
                }
                tracing::error!(
                    errors = errors.0.len(),
                    "new configuration refused; the running one stays"
                );
                Answer::Invalid(errors.0.iter().map(ToString::to_string).collect())
            }
            Ok(config) => self.switch(config, created),
        };
        let status = systemd::status_line(&self.engine.view().current());
        self.notify(&format!("READY=1\nSTATUS={status}"));
        answer
    }

    fn switch(&mut self, config: Config, created: bool) -> Answer {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        if config.daemon.http.server_differs(&self.config.daemon.http)
            || config.daemon.rtsp != self.config.daemon.rtsp
            || config.daemon.log != self.config.daemon.log
        {
            tracing::warn!(
                "http (but for http.writes), rtsp and log settings take effect at the next restart"
            );
        }
        let applied = self.engine.apply(&config, &runtime::loader(&config));
        match applied {
            Ok(changes) => {
                log_changes(&changes);
                self.config = config;
                Answer::Applied { changes, created }
            }
            Err(error) => {
                tracing::error!(%error, "the new configuration could not be applied");
                Answer::Failed(error.to_string())
            }
        }
    }

    /// Validates `body` as pipeline `name` with every other file, writes it atomically, and
    /// applies the result. What `http.writes` does not allow is refused first, before the
    /// validation looks at the files and directories the pipeline names.
    fn put(&mut self, name: &str, body: &str) -> Answer {
        let target = match self.pipeline_file(name) {
            Ok(target) => target,
            Err(answer) => return answer,
        };
        let text = match pipeline_text(name, body) {
            Ok(text) => text,
            Err(error) => {
                return Answer::Invalid(vec![format!("{}: {error}", paths::display(&target.path))]);
            }
        };
        let created = self.config.pipeline(name).is_none();
        let overlay = Overlay::from([(target.path.clone(), Some(text.clone()))]);
        let refusals = self.refusals(&target.path, &overlay);
        if !refusals.is_empty() {
            for refusal in &refusals {
                tracing::warn!(pipeline = name, "PUT refused: {refusal}");
            }
            return Answer::Forbidden(refusals);
        }
        if let Err(errors) = preflight::load_with(&self.file, &overlay) {
            return Answer::Invalid(errors.0.iter().map(ToString::to_string).collect());
        }
        if let Err(error) = write_pipeline_file(&target, &text) {
            return Answer::Failed(format!("cannot write {}: {error}", target.path.display()));
        }
        tracing::info!(pipeline = name, file = %target.path.display(), "pipeline written over HTTP");
        self.apply(&Overlay::new(), created)
    }

    /// What the pipeline in `file`, as `overlay` has it, uses that `http.writes` (as running)
    /// does not allow. A file that does not parse has nothing to check: the validation that
    /// follows refuses it, and looks at nothing it names.
    fn refusals(&self, file: &Path, overlay: &Overlay) -> Vec<String> {
        let reading = Config::read_with(&self.file, overlay);
        let Some(pipeline) = reading
            .config
            .as_ref()
            .and_then(|config| config.pipelines.iter().find(|p| p.file == file))
        else {
            return Vec::new();
        };
        let display = paths::display(file);
        let mut refusals = Vec::new();
        crate::control::policy::check(
            &pipeline.config,
            &self.config.daemon.http.writes,
            &mut FileErrors {
                file: &display,
                errors: &mut refusals,
            },
        );
        refusals.iter().map(ToString::to_string).collect()
    }

    /// Removes pipeline `name`'s file (when the rest stays valid) and applies the result.
    fn delete(&mut self, name: &str) -> Answer {
        let Some(file) = self.config.pipeline(name).map(|p| p.file.clone()) else {
            return Answer::NotFound(name.to_string());
        };
        let overlay = Overlay::from([(file.clone(), None)]);
        if let Err(errors) = preflight::load_with(&self.file, &overlay) {
            return Answer::Invalid(errors.0.iter().map(ToString::to_string).collect());
        }
        if let Err(error) = std::fs::remove_file(&file) {
            return Answer::Failed(format!("cannot remove {}: {error}", file.display()));
        }
        tracing::info!(pipeline = name, file = %file.display(), "pipeline removed over HTTP");
        self.apply(&Overlay::new(), false)
    }

    /// The file pipeline `name` lives in, or would: its current file, else `<name>.yaml` in the
    /// pipelines directory when nothing is there yet. A name that could escape that directory
    /// is refused, and so is a new name whose file exists (it holds another pipeline, or
    /// something that is not one: never overwritten).
    #[allow(clippy::result_large_err)]
    fn pipeline_file(&self, name: &str) -> Result<Target, Answer> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(Answer::Invalid(vec![format!(
                "'{name}' is not a valid pipeline name: use letters, digits, '-', '_' and '.' (not first)"
            )]));
        }
        if let Some(existing) = self.config.pipeline(name) {
            return Ok(Target {
                path: existing.file.clone(),
                replace: true,
            });
        }
        let path = self
            .config
            .daemon
            .pipelines_dir
            .join(format!("{name}.yaml"));
        if std::fs::symlink_metadata(&path).is_ok() {
            let shown = paths::display(&path);
            let holder = self.config.pipelines.iter().find(|p| p.file == path);
            return Err(Answer::Conflict(match holder {
                Some(other) => format!(
                    "{shown} holds pipeline '{}', not '{name}'; nothing was written (PUT /api/pipelines/{} changes that one; a new pipeline needs a file of its own)",
                    other.config.name, other.config.name
                ),
                None => format!(
                    "{shown} already exists and is not pipeline '{name}''s file; nothing was written (move it away, or fix it and reload)"
                ),
            }));
        }
        Ok(Target {
            path,
            replace: false,
        })
    }

    fn notify(&self, state: &str) {
        if let Some(notifier) = &self.notifier {
            notifier.send(state);
        }
    }
}

/// The YAML to write for a `PUT` body (YAML or JSON): its `name`, when given, must be the
/// URL's; when absent, the URL's is put in.
fn pipeline_text(name: &str, body: &str) -> Result<String, String> {
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(body).map_err(|error| format!("not YAML or JSON: {error}"))?;
    let Some(mapping) = value.as_mapping_mut() else {
        return Err("expected a mapping of pipeline settings".into());
    };
    match mapping.get("name") {
        None => {
            mapping.insert("name".into(), name.into());
        }
        Some(serde_yaml::Value::String(given)) if given == name => {}
        Some(given) => {
            return Err(format!(
                "name: the body names {} but the URL names '{name}'",
                serde_yaml::to_string(given).unwrap_or_default().trim()
            ));
        }
    }
    serde_yaml::to_string(&value).map_err(|error| error.to_string())
}

/// Where a `PUT` writes its pipeline.
struct Target {
    path: PathBuf,
    /// The pipeline's own file, replaced; otherwise a new file, which must not exist.
    replace: bool,
}

/// Writes `text` as `target` so that a reader sees the old file or the new one, never a part.
/// The temporary file is created new under a name of its own (never an existing file, nor a
/// symbolic link someone planted), and removed whatever fails. A new file is linked into
/// place only if nothing took its name meanwhile.
fn write_pipeline_file(target: &Target, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = paths::parent_dir(&target.path);
    let (temporary, mut file) = create_temporary(&dir, &target.path)?;
    let placed = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            if target.replace {
                std::fs::rename(&temporary, &target.path)
            } else {
                std::fs::hard_link(&temporary, &target.path)
            }
        });
    // Replaced, the temporary file became the target; otherwise it goes.
    let left = placed.is_err() || !target.replace;
    if left && let Err(error) = std::fs::remove_file(&temporary) {
        tracing::warn!(file = %temporary.display(), %error, "cannot remove a temporary file");
    }
    placed?;
    std::fs::File::open(&dir)?.sync_all()
}

/// A new, empty file beside `target`: hidden and not `.yaml`, so the loader never reads one
/// that a crash left behind.
fn create_temporary(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let mut tries = 0;
    loop {
        let temporary = dir.join(format!(".{name}.{:016x}.tmp", fastrand::u64(..)));
        // create_new: O_CREAT | O_EXCL, which fails on any existing name, links included.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
        {
            Ok(file) => return Ok((temporary, file)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => {
                tries += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

fn log_changes(changes: &Changes) {
    tracing::info!(
        added = ?changes.added,
        removed = ?changes.removed,
        restarted = ?changes.changed,
        unchanged = changes.unchanged.len(),
        models_unloaded = ?changes.unloaded_models,
        "configuration applied"
    );
}

/// Whether every pipeline ended well (finished).
pub fn all_finished(reports: &[PipelineReport]) -> bool {
    reports.iter().all(|r| r.state == PipelineState::Finished)
}
