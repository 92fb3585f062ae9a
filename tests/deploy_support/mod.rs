//! What the deployment tests share: running the real binary as it would run where it is
//! deployed, with the absolute paths its files name (`/var/lib/visiond`) backed by a test's
//! temporary directories.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// A command that runs `program args…` in a private mount namespace in which each
/// `(directory, target)` of `binds` is bind-mounted over `target`, a directory that exists on
/// this machine (`/var/lib`, `/run`): nothing outside the namespace sees the mounts, and the
/// program reads the very files it would read when deployed. `unshare --mount` as root, and
/// with `--user --map-root-user` (an unprivileged user namespace) otherwise.
pub fn namespaced(binds: &[(&Path, &str)], program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("unshare");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        command.args(["--user", "--map-root-user"]);
    }
    command.args([
        "--mount",
        "--",
        "sh",
        "-ec",
        r#"while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done; shift; exec "$@""#,
        "sh",
    ]);
    for (directory, target) in binds {
        command.arg(directory).arg(target);
    }
    command.arg("--").arg(program).args(args);
    command
}

/// Runs it, failing the test with what was said when a namespace cannot be made.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare (util-linux): {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !(stderr.starts_with("unshare:") || stderr.starts_with("mount:")),
        "these tests run programs in namespaces of their own (unshare --mount or --net, with \
         --user --map-root-user for a user other than root), which this machine refused:\n{stderr}"
    );
    output
}

/// `NAME=value` lines of a systemd `EnvironmentFile=` (comments and blank lines skipped,
/// values unquoted as systemd does for a plain `"…"` or `'…'`).
pub fn environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| {
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            (name.trim().to_owned(), unquoted.to_owned())
        })
        .collect()
}

/// A command that runs `program` in a network namespace of its own, with no interface but
/// loopback: whatever it needs from the network, it does not get.
pub fn offline(program: &Path) -> Command {
    let mut command = Command::new("unshare");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        command.args(["--user", "--map-root-user"]);
    }
    command.args(["--net", "--"]).arg(program);
    command
}

/// The status line and body of `GET path`, or None while nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}
