//! `make install DESTDIR=… PREFIX=…`: the files land where a distribution puts them, the unit
//! names the installed binary, an operator's edited configuration survives a reinstall, and the
//! unit passes `systemd-analyze verify` and rates ≤ 4.0 on `systemd-analyze security`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `make install` of the binary under test into `destdir`.
fn install(destdir: &Path) -> String {
    let output = Command::new("make")
        .arg("--no-print-directory")
        .arg("install")
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg("PREFIX=/usr")
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

/// `systemd-analyze` on the installed unit, when this machine has it.
fn systemd_analyze(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(output) => Some(output),
        Err(_) => {
            eprintln!("skipped: systemd-analyze is not installed here");
            None
        }
    }
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
    let Some(verify) = systemd_analyze(&["verify", "--man=no", &unit]) else {
        return;
    };
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let Some(security) = systemd_analyze(&["security", "--offline=yes", &unit]) else {
        return;
    };
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
