//! The control plane's own settings (`http`), checked with every other error at once.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn live(name: &str, dir: &Path) -> Pipeline {
    Pipeline::new(name)
        .source(Source::test(64, 48).fps(30))
        .model("none")
        .jsonl(&dir.join(format!("{name}.jsonl")))
}

/// A daemon file in `dir` whose `http` section is `listen` on a free port plus `http`.
fn tree(dir: &Path, http: &str, pipelines: &[Pipeline]) -> PathBuf {
    let file = write_tree(dir, "", pipelines);
    set_http(&file, http);
    file
}

fn set_http(file: &Path, http: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("http:")).collect();
    std::fs::write(
        file,
        format!(
            "{}\nhttp: {{ listen: \"127.0.0.1:0\", {http} }}\n",
            kept.join("\n")
        ),
    )
    .unwrap();
}

#[test]
fn bad_http_settings_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let file = tree(
        dir.path(),
        "max_connections: 0, header_timeout_ms: 10, idle_timeout_ms: 0, allowed_hosts: [], \
         writes: { allow_launch: false, dirs: [nowhere] }",
        &[live("one", dir.path())],
    );
    let errors: Vec<String> = visiond::preflight::load(&file)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    let nowhere = dir.path().join("nowhere");
    for expected in [
        "http.max_connections: must be between 1 and 65536".to_string(),
        "http.header_timeout_ms: must be at least 100".to_string(),
        "http.idle_timeout_ms: must be at least 100".to_string(),
        "http.allowed_hosts: lists no host, so every request would be refused".to_string(),
        format!(
            "http.writes.dirs[0]: {} is not a directory",
            nowhere.display()
        ),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.contains("visiond.yaml: ") && e.contains(&expected)),
            "{expected}: {errors:#?}"
        );
    }
    assert_eq!(errors.len(), 5, "{errors:#?}");
    set_http(
        &file,
        "allowed_hosts: [\"http://visiond.local/\", \"ok.local\"]",
    );
    let errors = visiond::preflight::load(&file).unwrap_err().to_string();
    assert!(
        errors.contains(
            "http.allowed_hosts[0]: 'http://visiond.local/' is not a host name or address, with or without :port"
        ) && !errors.contains("allowed_hosts[1]"),
        "{errors}"
    );
}
