//! Headless Chromium (Debian's, as an operator's browser), driven through the DevTools
//! protocol over the pipe Chromium offers (`--remote-debugging-pipe`: commands in on fd 3,
//! answers out on fd 4, each a JSON text ending in a NUL), so tests run pages in real time:
//! their video plays, their WebRTC connects, and the test reads what they saw.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";

/// One Chromium with its own fresh profile.
pub struct Browser {
    child: Child,
    commands: File,
    answers: BufReader<File>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// A page (a tab) of the browser.
pub struct Page {
    target: String,
    session: String,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let done = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(done, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Starts Chromium (scripts/setup installs Debian's).
    pub fn launch() -> Self {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is not installed: scripts/setup installs Debian's chromium"
        );
        let profile = tempfile::tempdir().unwrap();
        let (command_read, command_write) = pipe();
        let (answer_read, answer_write) = pipe();
        let (theirs_in, theirs_out) = (command_read.as_raw_fd(), answer_write.as_raw_fd());
        let mut command = Command::new(CHROMIUM);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only fcntl and dup2 run between fork and exec, both async-signal-safe. They
        // put the pipe's ends where Chromium reads and writes the protocol: first out of the
        // way (either may be 3 or 4 already, where dup2 onto itself would leave it
        // close-on-exec), then onto 3 and 4 (dup2 clears close-on-exec on the copies).
        unsafe {
            command.pre_exec(move || {
                let high_in = libc::fcntl(theirs_in, libc::F_DUPFD_CLOEXEC, 10);
                let high_out = libc::fcntl(theirs_out, libc::F_DUPFD_CLOEXEC, 10);
                if high_in < 0
                    || high_out < 0
                    || libc::dup2(high_in, 3) < 0
                    || libc::dup2(high_out, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("starting Chromium");
        drop(command_read);
        drop(answer_write);
        Self {
            child,
            commands: File::from(command_write),
            answers: BufReader::new(File::from(answer_read)),
            next_id: 1,
            _profile: profile,
        }
    }

    /// Sends one command (to `session`, or the browser) and waits for its answer; events
    /// that come meanwhile are skipped.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .unwrap_or_else(|error| panic!("{method}: {error}"))
    }

    /// [`Self::call`], with the protocol's error as an error.
    fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut text = serde_json::to_vec(&message).unwrap();
        text.push(0);
        self.commands.write_all(&text).unwrap();
        loop {
            let mut raw = Vec::new();
            let read = self.answers.read_until(0, &mut raw).unwrap();
            assert!(
                read > 0,
                "Chromium closed its protocol pipe during {method}"
            );
            raw.pop();
            let answer: Value = serde_json::from_slice(&raw).unwrap();
            if answer["id"] == json!(id) {
                if let Some(error) = answer.get("error") {
                    return Err(error.clone());
                }
                return Ok(answer["result"].clone());
            }
        }
    }

    /// Opens `url` in a new tab.
    pub fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({ "url": url }))["targetId"]
            .as_str()
            .unwrap()
            .to_string();
        let session = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        let page = Page { target, session };
        // Until the page itself has loaded, an evaluation may land in the blank one before it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let loaded = self
                .try_call(
                    Some(&page.session),
                    "Runtime.evaluate",
                    json!({ "expression": "location.href + ' ' + document.readyState", "returnByValue": true }),
                )
                .ok()
                .and_then(|r| r["result"]["value"].as_str().map(str::to_string))
                .is_some_and(|v| v.starts_with(url) && v.ends_with(" complete"));
            if loaded {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        page
    }

    /// The value of `expression` in `page` (awaited when it is a promise).
    pub fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let result = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Closes the tab as a user would (its `pagehide` runs).
    pub fn close(&mut self, page: Page) {
        self.call(
            None,
            "Target.closeTarget",
            json!({ "targetId": page.target }),
        );
    }

    /// Ends Chromium at once, as a crash or a killed browser would: its pages get no say.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
