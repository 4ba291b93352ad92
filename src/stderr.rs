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
        loop {
            eprint!("ovlrun: [c]ommit, commit [a]tomically, [p]reserve or [d]iscard? ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            if std::io::stdin().lock().read_line(&mut line).unwrap_or(0) == 0 {
                return Policy::Preserve;
            }
            match line.trim() {
                "c" | "commit" => return Policy::Commit,
                "a" | "atomic" => return Policy::CommitAtomic,
                "p" | "preserve" => return Policy::Preserve,
                "d" | "discard" => return Policy::Discard,
                _ => {}
            }
        }
    }
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
