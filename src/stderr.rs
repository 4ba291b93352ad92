//! The binary's [`Report`]: what a session says goes to stderr, its commit progress to a bar
//! on a terminal, and `--policy ask` asks on the terminal.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use ovlrun::policy::Change;
use ovlrun::policy::Policy;
use ovlrun::session::report::{CommitSize, Note, Progress, Report};

/// Prints a session's notes to stderr.
pub struct Stderr;

impl Report for Stderr {
    fn note(&self, note: Note<'_>) {
        eprintln!("ovlrun: {note}");
    }

    fn commit_progress(&self, size: CommitSize) -> Box<dyn Progress + '_> {
        // A bar on a terminal for commits that take a while; nothing anywhere else.
        let bar = if std::io::stderr().is_terminal() && size.ops > 100 {
            indicatif::ProgressBar::new(size.steps)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "ovlrun: committing {msg} [{bar:30}] {pos}/{len} steps",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{} changes", size.changes));
        Box::new(Bar(bar))
    }

    /// On a terminal, shows the diff summary and asks; elsewhere keeps the session (never
    /// loses work without being told to).
    fn ask(&self, id: &str, changes: &[(Change, PathBuf)]) -> Policy {
        if !std::io::stdin().is_terminal() {
            eprintln!("ovlrun: --policy ask without a terminal: keeping the session");
            return Policy::Preserve;
        }
        let count = |c| changes.iter().filter(|(k, _)| *k == c).count();
        eprintln!(
            "ovlrun: {} added, {} changed, {} deleted",
            count(Change::Added),
            count(Change::Changed),
            count(Change::Deleted)
        );
        for (c, p) in changes.iter().take(20) {
            eprintln!("  {} {}", c.letter(), p.display());
        }
        if changes.len() > 20 {
            eprintln!("  ... ({} more: `ovlrun diff {id}`)", changes.len() - 20);
        }
        let answers = answers();
        loop {
            eprint!("ovlrun: [c]ommit, commit [a]tomically, [P]reserve or [d]iscard? ");
            let _ = std::io::stderr().flush();
            // End of input or Ctrl-C: keep the session, as the default does.
            let Ok(Some(line)) = answers.recv() else {
                eprintln!();
                eprintln!("ovlrun: no answer: keeping the session");
                return Policy::Preserve;
            };
            match line.trim() {
                "" | "p" | "preserve" => return Policy::Preserve,
                "c" | "commit" => return Policy::Commit,
                "a" | "atomic" => return Policy::CommitAtomic,
                "d" | "discard" => return Policy::Discard,
                _ => {}
            }
        }
    }
}

/// The lines typed at the prompt, each `Some`; `None` (or a closed channel) when input ends
/// or an interrupt comes (INT, TERM, HUP: blocked here, so they end the prompt instead of
/// ovlrun, or of nothing when the launcher left them blocked). The threads outlive an answer;
/// ovlrun exits soon after.
fn answers() -> std::sync::mpsc::Receiver<Option<String>> {
    use nix::sys::signal::{SigSet, Signal};
    let (tx, rx) = std::sync::mpsc::channel();
    let mut interrupts = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        interrupts.add(s);
    }
    // Blocked before the threads start, so they inherit the mask and sigwait sees them.
    if interrupts.thread_block().is_ok() {
        let on_signal = tx.clone();
        std::thread::spawn(move || {
            if interrupts.wait().is_ok() {
                let _ = on_signal.send(None);
            }
        });
    }
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        loop {
            let mut line = String::new();
            let answer = match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(line),
            };
            let end = answer.is_none();
            if tx.send(answer).is_err() || end {
                return;
            }
        }
    });
    rx
}

/// A commit's progress bar, cleared when the commit ends.
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn step(&self) {
        self.0.inc(1);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
