//! Tests on a real terminal: util-linux `script` gives the run a pty of its own.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `cmd` (util-linux `script` running a shell script on a new pty) and returns its output lines (without the pty's `\r\n`)
/// up to a line `DONE`, or what came within 30 s; `on_line` sees each line and may type
/// into the pty. The `script` process is killed afterwards, whatever happened.
pub fn on_a_pty(
    mut cmd: Command,
    mut on_line: impl FnMut(&str, &mut std::process::ChildStdin),
) -> Vec<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        // `lines` takes the pty's `\r\n` as one line end.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    let mut stdin = child.stdin.take().unwrap();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                on_line(&line, &mut stdin);
                let done = line == "DONE";
                lines.push(line);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    lines
}
