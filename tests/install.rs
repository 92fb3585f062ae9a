//! `make install DESTDIR=… PREFIX=…`: the files land where a distribution puts them, the
//! installed binary runs from its own libraries as an unprivileged user who cannot read the
//! builder's home, the unit names the installed binary, an operator's edited configuration
//! survives a reinstall, and the unit passes `systemd-analyze verify` and rates ≤ 4.0 on
//! `systemd-analyze security`.

mod common;
mod deploy_support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `make install` of the binary under test into `destdir`, its libraries hard-linked (the
/// self-contained install's own test copies them, as an operator's install does).
fn install(destdir: &Path) -> String {
    install_with(destdir, "link")
}

fn install_with(destdir: &Path, bundle: &str) -> String {
    let output = Command::new("make")
        .arg("--no-print-directory")
        .arg("install")
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg("PREFIX=/usr")
        .arg(format!("BUNDLE={bundle}"))
        .arg(format!("BIN={}", env!("CARGO_BIN_EXE_visiond")))
        .current_dir(repo())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "make install failed:\n{text}");
    text
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn make_install_lays_out_the_files_and_keeps_an_operators_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    install(root);
    let binary = root.join("usr/bin/visiond");
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("visiond "));

    let unit = read(&root.join("usr/lib/systemd/system/visiond.service"));
    assert!(unit.contains("ExecStart=/usr/bin/visiond run -c /etc/visiond/visiond.yaml"));
    let settings: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        settings.iter().all(|l| !l.contains("/usr/local")),
        "the unit must follow PREFIX:\n{unit}"
    );
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "LimitNOFILE=",
        "ExecReload=/usr/bin/visiond check",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }

    let man = read(&root.join("usr/share/man/man1/visiond.1"));
    assert!(
        man.starts_with(".ie") || man.contains(".TH visiond 1"),
        "{man}"
    );
    for page in ["visiond-run.1", "visiond-check.1", "visiond-infer.1"] {
        assert!(
            root.join("usr/share/man/man1").join(page).is_file(),
            "{page}"
        );
    }
    let bash = read(&root.join("usr/share/bash-completion/completions/visiond"));
    assert!(bash.contains("complete -F _visiond") && bash.contains("check"));
    assert!(read(&root.join("usr/share/zsh/site-functions/_visiond")).contains("#compdef visiond"));
    assert!(
        read(&root.join("usr/share/fish/vendor_completions.d/visiond.fish"))
            .contains("complete -c visiond")
    );
    assert!(
        root.join("usr/share/doc/visiond/examples/pipelines/front-door.yaml")
            .is_file()
    );
    for page in ["README.md", "docs/deployment.md", "docs/configuration.md"] {
        assert!(
            root.join("usr/share/doc/visiond").join(page).is_file(),
            "{page}"
        );
    }

    // The example configuration validates as installed (no pipeline is enabled yet).
    let config = root.join("etc/visiond/visiond.yaml");
    let check = Command::new(&binary)
        .arg("check")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let env = root.join("etc/visiond/env");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // An operator edits the file; a reinstall leaves it and puts the release's beside it.
    let edited = format!("{}\n# edited by the operator\n", read(&config));
    std::fs::write(&config, &edited).unwrap();
    let said = install(root);
    assert_eq!(read(&config), edited);
    assert!(root.join("etc/visiond/visiond.yaml.new").is_file());
    assert!(said.contains("kept your"), "{said}");
    // An unedited file is not touched and gets no .new twin.
    assert!(!root.join("etc/visiond/env.new").exists());
}

/// `systemd-analyze` on the installed unit (scripts/setup installs it with Debian's `systemd`).
fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e} (scripts/setup installs systemd)"))
}

#[test]
fn the_unit_verifies_and_its_exposure_is_at_most_four() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path());
    let installed = read(&dir.path().join("usr/lib/systemd/system/visiond.service"));
    // verify checks that the commands exist: point them at the staged binary.
    let binary = dir.path().join("usr/bin/visiond");
    let unit = dir.path().join("visiond.service");
    std::fs::write(
        &unit,
        installed.replace("/usr/bin/visiond", &binary.display().to_string()),
    )
    .unwrap();
    let unit = unit.display().to_string();
    let verify = systemd_analyze(&["verify", "--man=no", &unit]);
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let security = systemd_analyze(&["security", "--offline=yes", &unit]);
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for visiond.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure in:\n{report}"));
    assert!(exposure <= 4.0, "exposure {exposure}:\n{report}");
}

/// This checkout's HEAD as git abbreviates it for build.rs (12 hex digits); `unknown` outside
/// a git checkout, or what `VISIOND_COMMIT` exported at build time says.
fn head_commit() -> String {
    if let Ok(exported) = std::env::var("VISIOND_COMMIT") {
        return exported;
    }
    Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let output = Command::new(env!("CARGO_BIN_EXE_visiond"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    let version = String::from_utf8_lossy(&output.stdout);
    let commit = head_commit();
    assert_eq!(
        version.trim(),
        format!("visiond {} (commit {commit})", env!("CARGO_PKG_VERSION")),
        "`visiond --version` must name this checkout's HEAD"
    );
    if commit != "unknown" {
        assert_eq!(commit.len(), 12, "{commit}");
        assert!(commit.bytes().all(|b| b.is_ascii_hexdigit()), "{commit}");
    }
}

/// Every value under a `password_env` key, anywhere in a YAML document.
fn password_envs(value: &serde_yaml::Value, found: &mut Vec<String>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    (Some("password_env"), Some(name)) => found.push(name.to_owned()),
                    _ => password_envs(value, found),
                }
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| password_envs(v, found)),
        _ => {}
    }
}

/// The files a pipeline file writes: `(key, path)` of its recordings, depth16 and jsonl files.
fn written_paths(pipeline: &serde_yaml::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (list, kinds) in [
        ("sinks", &["file", "depth16"][..]),
        ("metadata", &["jsonl"][..]),
    ] {
        let items = pipeline.get(list).and_then(|v| v.as_sequence());
        for (i, item) in items.into_iter().flatten().enumerate() {
            for kind in kinds {
                if let Some(path) = item.get(kind).and_then(|k| k.get("path")) {
                    let path = path.as_str().unwrap_or_default().to_owned();
                    found.push((format!("{list}[{i}].{kind}.path"), path));
                }
            }
        }
    }
    found
}

/// `make install`, then docs/deployment.md's recipe: the example pipelines copied into
/// /etc/visiond/pipelines as they are installed, the passwords they name added to
/// /etc/visiond/env. The unit's `ExecStartPre=` check then runs with the unit's environment
/// (`Environment=`, `EnvironmentFile=`) in a mount namespace where /var/lib is the install's
/// own, so `/var/lib/visiond` (the unit's `StateDirectory=`) is the staged directory and every
/// path the examples name is read exactly as it is written.
#[test]
fn the_installed_examples_pass_check_writing_under_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    install(root);
    let unit = read(&root.join("usr/lib/systemd/system/visiond.service"));
    let settings = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|line| line.strip_prefix(key))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(settings("StateDirectory="), ["visiond"], "{unit}");
    let state = "/var/lib/visiond";
    // What systemd creates for StateDirectory= before ExecStartPre= runs.
    std::fs::create_dir_all(root.join("var/lib/visiond")).unwrap();

    // The examples write under the state directory, by absolute paths.
    let examples = root.join("usr/share/doc/visiond/examples/pipelines");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut envs = Vec::new();
    let daemon: serde_yaml::Value =
        serde_yaml::from_str(&read(&root.join("etc/visiond/visiond.yaml"))).unwrap();
    password_envs(&daemon, &mut envs);
    // A restart (an upgrade) drains on SIGTERM for at most shutdown.grace_ms and exits at the
    // latest 5 s later: systemd must not SIGKILL it before that.
    let grace_ms = daemon
        .get("shutdown")
        .and_then(|s| s.get("grace_ms"))
        .and_then(serde_yaml::Value::as_u64)
        .unwrap_or(5000);
    let stop: u64 = settings("TimeoutStopSec=")[0].parse().unwrap();
    assert!(
        stop * 1000 > grace_ms + 5000,
        "TimeoutStopSec={stop} must exceed shutdown.grace_ms {grace_ms} ms + 5 s"
    );
    let mut written = 0;
    for file in &files {
        let pipeline: serde_yaml::Value = serde_yaml::from_str(&read(file)).unwrap();
        for (key, path) in written_paths(&pipeline) {
            assert!(
                path.starts_with(&format!("{state}/")),
                "{}: {key}: {path} is not under {state}, the unit's StateDirectory= (the unit makes /etc read-only)",
                file.display()
            );
            written += 1;
        }
        password_envs(&pipeline, &mut envs);
    }
    assert!(written >= 2, "the examples write no file at all: {files:?}");

    // The passwords they name, in /etc/visiond/env as docs/deployment.md says.
    envs.sort();
    envs.dedup();
    assert!(envs.contains(&"FRONT_DOOR_PASSWORD".to_owned()), "{envs:?}");
    let env_file = root.join("etc/visiond/env");
    let mut env_text = read(&env_file);
    for name in &envs {
        env_text.push_str(&format!("{name}=example-{}\n", name.to_lowercase()));
    }
    std::fs::write(&env_file, env_text).unwrap();

    // ExecStartPre= as the unit has it: /usr/bin/visiond check -c /etc/visiond/visiond.yaml.
    let pre = settings("ExecStartPre=");
    let pre: Vec<&str> = pre[0].split_whitespace().collect();
    assert_eq!(
        pre,
        [
            "/usr/bin/visiond",
            "check",
            "-c",
            "/etc/visiond/visiond.yaml"
        ]
    );
    let binary = root.join("usr/bin/visiond");
    let config = root.join("etc/visiond/visiond.yaml");
    let check = || {
        let mut command = deploy_support::namespaced(
            &[(&root.join("var/lib"), "/var/lib")],
            &binary,
            &["check", "-c", &config.display().to_string()],
        );
        for name in ["HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT"] {
            command.env_remove(name);
        }
        for line in settings("Environment=") {
            for assignment in line.split_whitespace() {
                let (name, value) = assignment.split_once('=').unwrap();
                command.env(name, value);
            }
        }
        for file in settings("EnvironmentFile=") {
            let file = file.trim_start_matches('-').trim_start_matches('/');
            for (name, value) in deploy_support::environment_file(&read(&root.join(file))) {
                command.env(name, value);
            }
        }
        let output = deploy_support::run(&mut command);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), said)
    };

    // Every example but the USB camera's passes on any machine.
    let pipelines = root.join("etc/visiond/pipelines");
    let usb = "document-desk.yaml";
    for file in files.iter().filter(|f| !f.ends_with(usb)) {
        std::fs::copy(file, pipelines.join(file.file_name().unwrap())).unwrap();
    }
    let (code, said) = check();
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("{}: OK: ", config.display()))
            && said.contains("front-door")
            && said.contains("lab-pattern"),
        "{said}"
    );

    // The USB camera's needs /dev/video0: without one, that is the one error.
    std::fs::copy(examples.join(usb), pipelines.join(usb)).unwrap();
    let has_camera = std::fs::metadata("/dev/video0")
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()));
    let (code, said) = check();
    if has_camera {
        assert_eq!(code, Some(0), "{said}");
    } else {
        assert_eq!(code, Some(2), "{said}");
        let errors: Vec<&str> = said.lines().filter(|l| l.contains(".yaml: ")).collect();
        assert_eq!(errors.len(), 1, "{said}");
        assert!(
            errors[0]
                .contains("document-desk.yaml: source.v4l2.device: /dev/video0 does not exist"),
            "{said}"
        );
        assert!(
            said.contains("1 error(s); configuration not valid"),
            "{said}"
        );
    }
}

/// The README's "Point it at your RTSP camera": its two files, written where their first line
/// says, pass `visiond check` as the unit runs it (its HF_HOME, /var/lib/visiond its state
/// directory), with the passwords its `printf` line puts in /etc/visiond/env.
#[test]
fn the_readmes_camera_section_passes_check() {
    let readme = read(&repo().join("README.md"));
    let section = readme
        .split("## Point it at your RTSP camera")
        .nth(1)
        .expect("README has a section \"Point it at your RTSP camera\"")
        .split("\n## ")
        .next()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut written = Vec::new();
    let mut envs = Vec::new();
    for block in section.split("```yaml\n").skip(1) {
        let block = block.split("```").next().unwrap();
        let target = block
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# /"))
            .expect("each YAML block starts with `# /its/path`");
        let file = root.join(target);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, block).unwrap();
        let value: serde_yaml::Value = serde_yaml::from_str(block).unwrap();
        password_envs(&value, &mut envs);
        written.push(target.to_owned());
    }
    assert_eq!(
        written,
        [
            "etc/visiond/visiond.yaml",
            "etc/visiond/pipelines/camera.yaml"
        ]
    );
    let printf = section
        .lines()
        .find(|l| l.starts_with("printf '") && l.contains("/etc/visiond/env"))
        .expect("a printf line that fills /etc/visiond/env");
    for name in &envs {
        assert!(
            printf.contains(&format!("{name}=")),
            "the README's printf line does not set {name}: {printf}"
        );
    }
    std::fs::create_dir_all(root.join("var/lib/visiond")).unwrap();
    let config = root.join("etc/visiond/visiond.yaml");
    let mut command = deploy_support::namespaced(
        &[(&root.join("var/lib"), "/var/lib")],
        Path::new(env!("CARGO_BIN_EXE_visiond")),
        &["check", "-c", &config.display().to_string()],
    );
    for name in ["HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT"] {
        command.env_remove(name);
    }
    command.env("HF_HOME", "/var/lib/visiond/huggingface");
    for name in &envs {
        command.env(name, "example");
    }
    let output = deploy_support::run(&mut command);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert!(
        said.contains("OK: 1 model(s), 1 pipeline(s) (camera)"),
        "{said}"
    );
}

/// Uid and gid of `nobody`, whom the self-contained install runs as.
const NOBODY: u32 = 65534;

/// The libtorch tree the binary under test was linked against (the torch venv's site-packages,
/// or a libtorch archive's top directory): what the installed binary must not need.
fn libtorch_tree() -> PathBuf {
    let c10 = String::from_utf8(
        Command::new("ldd")
            .arg(env!("CARGO_BIN_EXE_visiond"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .lines()
    .find_map(|l| l.trim().strip_prefix("libc10.so => "))
    .map(|rest| PathBuf::from(rest.split(" (").next().unwrap()))
    .expect("the binary under test links libc10.so");
    let lib = c10.canonicalize().unwrap().parent().unwrap().to_owned();
    let top = lib.parent().unwrap();
    if top.file_name().is_some_and(|n| n == "torch") {
        top.parent().unwrap().to_owned()
    } else {
        top.to_owned()
    }
}

/// `program args…` as `nobody` with nothing of the caller's environment but `env`, in a mount
/// namespace where the builder's home and the libtorch tree are empty, unreadable tmpfs: the
/// installed binary finds nothing of the build. (As a user other than root: in a user
/// namespace of one's own, as that same unprivileged user.)
fn as_nobody_without_the_build(
    home: &Path,
    env: &[(&str, &str)],
    program: &Path,
    args: &[&str],
) -> Command {
    let builder_home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
    // The deeper first: once the home is covered, a tree inside it has no mount point left.
    let hidden = [libtorch_tree(), PathBuf::from(builder_home)];
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = Command::new("unshare");
    if !root {
        command.args(["--user", "--map-root-user"]);
    }
    let switch = if root {
        format!("setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups")
    } else {
        String::new()
    };
    command.args([
        "--mount",
        "--",
        "sh",
        "-ec",
        &format!(
            r#"while [ "$1" != -- ]; do mount -t tmpfs -o size=1m,mode=0700 none "$1"; shift; done; shift; exec {switch} "$@""#
        ),
        "sh",
    ]);
    command.args(&hidden).arg("--").arg("env").arg("-i");
    command.arg(format!("HOME={}", home.display()));
    command.arg("PATH=/usr/bin:/bin");
    for (name, value) in env {
        command.arg(format!("{name}={value}"));
    }
    command.arg(program).args(args);
    command
}

/// Issue 18's test of a self-contained install: `make install` copies the libraries the binary
/// needs beyond the distribution's into /usr/lib/visiond and points the binary there
/// (`$ORIGIN/../lib/visiond`); then, as `nobody`, with `HOME` an empty directory and the
/// builder's home and libtorch tree unreadable, `ldd` resolves every library inside the install,
/// `visiond check` passes and `visiond run` serves `/healthz` and runs a model on frames.
#[test]
fn the_installed_binary_runs_from_its_own_libraries_as_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let said = install_with(root, "copy");
    assert!(said.contains("libraries"), "{said}");
    let binary = root.join("usr/bin/visiond");
    let libdir = root.join("usr/lib/visiond");

    // Nothing the loader reads points at the build: the binary's RUNPATH is relative, and so is
    // every bundled library's.
    let runpath = |file: &Path| -> Vec<String> {
        let output = Command::new("readelf")
            .arg("-d")
            .arg(file)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)"))
            .filter_map(|l| l.split('[').nth(1))
            .flat_map(|l| {
                l.trim_end_matches(']')
                    .split(':')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(runpath(&binary), ["$ORIGIN/../lib/visiond"]);
    let bundled: Vec<PathBuf> = std::fs::read_dir(&libdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        bundled.iter().any(|p| p.ends_with("libtorch_cpu.so")),
        "{bundled:?}"
    );
    for library in &bundled {
        for entry in runpath(library) {
            assert!(
                entry.starts_with("$ORIGIN") || entry.starts_with("${ORIGIN}"),
                "{}: RUNPATH {entry}",
                library.display()
            );
        }
        // Copies, not links into the build's tree.
        assert_eq!(
            std::fs::metadata(library).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(library).unwrap()),
            1,
            "{}",
            library.display()
        );
    }

    // An empty home, the model (a tiny fixture) inside the install, a daemon file on free ports
    // with one pipeline that runs the model.
    let home = root.join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).ok();
    let model = root.join("usr/share/visiond-test/dpt-hybrid");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(repo().join("tests/fixtures/models/dpt-hybrid")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let (http, rtsp) = (common::free_port(), common::free_port());
    let config = root.join("etc/visiond/visiond.yaml");
    std::fs::write(
        &config,
        format!(
            "http: {{ listen: \"127.0.0.1:{http}\" }}\n\
             rtsp: {{ port: {rtsp}, address: 127.0.0.1 }}\n\
             pipelines_dir: pipelines\n\
             models:\n  depth: {{ path: {}, device: cpu, dtype: f32 }}\n",
            model.display()
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("etc/visiond/pipelines/pattern.yaml"),
        format!(
            "name: pattern\nsource:\n  test: {{ pattern: ball, width: 96, height: 64, fps: 10 }}\n\
             model: depth\nsinks:\n  - rtsp: {{ mount: /pattern }}\nmetadata:\n  - jsonl: {{ path: {}/results.jsonl }}\n",
            home.display()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();

    // The loader's view, as nobody: every library found, every non-system one in the install.
    let ldd = deploy_support::run(&mut as_nobody_without_the_build(
        &home,
        &[],
        Path::new("/usr/bin/ldd"),
        &[&binary.display().to_string()],
    ));
    let listing = String::from_utf8_lossy(&ldd.stdout).into_owned();
    assert!(
        ldd.status.success(),
        "{listing}{}",
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(!listing.contains("not found"), "{listing}");
    let tree = libtorch_tree();
    for line in listing.lines() {
        let Some((name, target)) = line.trim().split_once(" => ") else {
            continue;
        };
        let target = PathBuf::from(target.split(" (").next().unwrap());
        assert!(
            !target.starts_with(&tree),
            "{name} from the build's tree: {listing}"
        );
        if !target.starts_with("/lib") && !target.starts_with("/usr/lib") {
            assert!(
                target
                    .canonicalize()
                    .unwrap()
                    .starts_with(libdir.canonicalize().unwrap()),
                "{name} resolves outside the install: {listing}"
            );
        }
    }
    for name in ["libtorch_cpu.so", "libc10.so"] {
        assert!(
            listing.contains(&format!(
                "{name} => {}",
                binary
                    .parent()
                    .unwrap()
                    .join("../lib/visiond")
                    .join(name)
                    .display()
            )),
            "{name}: {listing}"
        );
    }

    // check, then run, as nobody.
    let check = deploy_support::run(&mut as_nobody_without_the_build(
        &home,
        &[],
        &binary,
        &["check", "-c", &config_arg],
    ));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(check.status.code(), Some(0), "{said}");
    assert!(
        said.contains("OK: 1 model(s), 1 pipeline(s) (pattern)"),
        "{said}"
    );

    let log = std::fs::File::create(root.join("run.log")).unwrap();
    let mut daemon = as_nobody_without_the_build(&home, &[], &binary, &["run", "-c", &config_arg])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(root.join("run.log")).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut frames = 0;
    while std::time::Instant::now() < deadline && frames < 10 {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("visiond run exited ({status}):\n{}", log());
        }
        if let Some((_, body)) = deploy_support::http_get(http, "/api/pipelines") {
            let pipelines: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            frames = pipelines[0]["frames_out"].as_u64().unwrap_or(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let health = deploy_support::http_get(http, "/healthz");
    // SAFETY: kill only sends a signal to the child this test started and still holds.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    let log = log();
    assert!(
        frames >= 10,
        "the model ran on {frames} frames in 60 s:\n{log}"
    );
    assert_eq!(
        health.map(|h| h.0),
        Some("HTTP/1.1 200 OK".to_owned()),
        "{log}"
    );
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(home.join("results.jsonl").is_file(), "{log}");
}
