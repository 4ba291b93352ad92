//! Processes a test starts: run to completion under a time limit ([`run_within`],
//! [`run_limited`], [`run_with_input`]), or in the background with their stdout lines arriving
//! one by one ([`Bg`]). What a finished one did is an [`Out`], whose [`Out::context`] (the
//! command, its status, its stdout and stderr) goes into every failure message.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// ovlrun's own failure, bad input included.
pub const EXIT_OWN_ERROR: i32 = 125;

/// How many lines of stdout and of stderr [`Out::context`] shows at most: the last ones (apt
/// and make are chatty).
const CONTEXT_LINES: usize = 60;

/// How often a wait looks whether the process has ended.
const POLL: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------------
// What a process did

/// What a finished process did.
pub struct Out {
    /// The command line, shell-quoted, after the variables it sets.
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From the spawn to the exit.
    pub elapsed: Duration,
    /// SIGKILLed at its time limit (only [`run_limited`] returns such an `Out`: the other
    /// runners fail the test).
    pub timed_out: bool,
}

impl Out {
    /// The exit code, or 128+n when the process died of signal n (shell style).
    pub fn code(&self) -> i32 {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => -1,
        }
    }

    /// The command, its status and run time, and the end of its stdout and stderr: for
    /// failure messages.
    pub fn context(&self) -> String {
        format!(
            "command: {}\nstatus: {} after {:.1} s{}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.status,
            self.elapsed.as_secs_f64(),
            if self.timed_out {
                " (timed out: killed)"
            } else {
                ""
            },
            tail(&self.stdout, CONTEXT_LINES),
            tail(&self.stderr, CONTEXT_LINES)
        )
    }

    /// Asserts the exit code (see [`Out::code`]).
    #[track_caller]
    pub fn expect_code(&self, want: i32) -> &Out {
        assert_eq!(
            self.code(),
            want,
            "exit code: expected {want}, got {}\n{}",
            self.code(),
            self.context()
        );
        self
    }

    /// Asserts exit code 0.
    #[track_caller]
    pub fn expect_ok(&self) -> &Out {
        self.expect_code(0)
    }

    /// Asserts that stdout is exactly `want` (lines joined with `\n`, plus a final newline).
    #[track_caller]
    pub fn expect_stdout(&self, want: &[&str]) -> &Out {
        let want = want.iter().map(|l| format!("{l}\n")).collect::<String>();
        assert_eq!(self.stdout, want, "stdout differs\n{}", self.context());
        self
    }

    /// Asserts ovlrun's own failure ([`EXIT_OWN_ERROR`]) whose stderr contains each of `parts`.
    #[track_caller]
    pub fn expect_own_error(&self, parts: &[&str]) -> &Out {
        assert_eq!(self.code(), EXIT_OWN_ERROR, "{}", self.context());
        for p in parts {
            assert!(
                self.stderr.contains(p),
                "stderr lacks {p:?}\n{}",
                self.context()
            );
        }
        self
    }

    /// The value of the last stdout line `KEY=VALUE` with this key (a script prints its
    /// findings after what the tools it ran printed).
    #[track_caller]
    pub fn value(&self, key: &str) -> &str {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no line {key}=... on stdout\n{}", self.context()))
    }

    /// The session id and upper from preserve's stderr line "ovlrun: session ID kept; its
    /// changes are in UPPER".
    #[track_caller]
    pub fn kept_session(&self) -> (String, PathBuf) {
        self.stderr
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix("ovlrun: session ")?;
                let (id, rest) = rest.split_once(" kept; its changes are in ")?;
                Some((id.to_owned(), PathBuf::from(rest.trim())))
            })
            .unwrap_or_else(|| panic!("no 'session ID kept' line on stderr\n{}", self.context()))
    }
}

/// The last `n` lines of `s`, after a count of those left out.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut t = String::new();
    if skip > 0 {
        let _ = writeln!(t, "[... {skip} lines ...]");
    }
    for l in &lines[skip..] {
        let _ = writeln!(t, "{l}");
    }
    t
}

/// `cmd` as a shell would take it: the variables it sets, the program and the arguments,
/// quoted where a shell would split or expand them.
fn describe(cmd: &Command) -> String {
    fn quoted(s: &mut String, a: &str) {
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'$;&|()<>\"".contains(c)) {
            let _ = write!(s, "'{}'", a.replace('\'', r"'\''"));
        } else {
            s.push_str(a);
        }
    }
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let _ = write!(s, "{}=", k.to_string_lossy());
            quoted(&mut s, &v.to_string_lossy());
            s.push(' ');
        }
    }
    quoted(&mut s, &cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        quoted(&mut s, &a.to_string_lossy());
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Running to completion

/// Runs `cmd` (stdin closed) to completion within `limit`; SIGKILLs it and fails the test when
/// it takes longer.
#[track_caller]
pub fn run_within(cmd: &mut Command, limit: Duration) -> Out {
    in_time(run_limited(cmd, limit), limit)
}

/// [`run_within`] with `input` written to stdin, which is then closed.
#[track_caller]
pub fn run_with_input(cmd: &mut Command, input: &[u8], limit: Duration) -> Out {
    in_time(run_to_end(cmd, Some(input), limit), limit)
}

/// Runs `cmd` (stdin closed) for at most `limit`, then SIGKILLs it (an ovlrun session dies with
/// it). The caller decides whether a time-out ([`Out::timed_out`]) fails the test.
#[track_caller]
pub fn run_limited(cmd: &mut Command, limit: Duration) -> Out {
    run_to_end(cmd, None, limit)
}

#[track_caller]
fn run_to_end(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Out {
    let what = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    if let Some(input) = input {
        // Dropped at the end of the block: the process sees EOF after `input`.
        let mut stdin = child.stdin.take().unwrap();
        if let Err(e) = stdin.write_all(input) {
            panic!("write stdin of {what}: {e}");
        }
    }
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let status = wait_until(&mut child, start + limit);
    let timed_out = status.is_none();
    let status = status.unwrap_or_else(|| kill_and_reap(&mut child));
    Out {
        what,
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        elapsed: start.elapsed(),
        timed_out,
    }
}

/// Fails the test when `out` timed out.
#[track_caller]
fn in_time(out: Out, limit: Duration) -> Out {
    assert!(
        !out.timed_out,
        "still running after {limit:?}: killed\n{}",
        out.context()
    );
    out
}

/// Reads `r` to its end on a thread of its own (so that a full pipe never blocks the process).
fn drain(r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = BufReader::new(r).read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// The exit status once `child` has ended, or `None` at `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

fn kill_and_reap(child: &mut Child) -> ExitStatus {
    let _ = child.kill();
    child.wait().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Running in the background

/// A process running in the background whose stdout lines arrive one by one; SIGKILLed on
/// drop if still alive.
pub struct Bg {
    what: String,
    start: Instant,
    /// How long each [`Bg::wait_line`] and [`Bg::wait`] may take.
    limit: Duration,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Bg {
    /// Starts `cmd` (stdin closed). `limit` bounds each later wait: a process that does not
    /// show the line or end in time is SIGKILLed and the test fails.
    #[track_caller]
    pub fn spawn(cmd: &mut Command, limit: Duration) -> Bg {
        let what = describe(cmd);
        let start = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().unwrap()));
        Bg {
            what,
            start,
            limit,
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The process id (while it has not been waited for).
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// Waits until stdout has shown the line `want`.
    #[track_caller]
    pub fn wait_line(&mut self, want: &str) {
        let deadline = Instant::now() + self.limit;
        loop {
            if self.seen.iter().any(|l| l == want) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(e) => {
                    let out = self.kill_now();
                    panic!("no line {want:?} on stdout ({e:?})\n{}", out.context());
                }
            }
        }
    }

    /// The exit status if the process has ended (without waiting).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Waits (up to the limit) for the process to exit.
    #[track_caller]
    pub fn wait(&mut self) -> Out {
        let limit = self.limit;
        let child = self.child.as_mut().unwrap();
        let status = wait_until(child, Instant::now() + limit);
        let timed_out = status.is_none();
        let status = status.unwrap_or_else(|| kill_and_reap(child));
        in_time(self.collect(status, timed_out), limit)
    }

    /// SIGKILLs the process (if alive) and returns what it did.
    pub fn kill_now(&mut self) -> Out {
        let status = kill_and_reap(self.child.as_mut().unwrap());
        self.collect(status, false)
    }

    fn collect(&mut self, status: ExitStatus, timed_out: bool) -> Out {
        self.child = None;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        Out {
            what: self.what.clone(),
            status,
            stdout: self.seen.iter().map(|l| format!("{l}\n")).collect(),
            stderr,
            elapsed: self.start.elapsed(),
            timed_out,
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
