//! Names as `diff` shows them: every byte survives.
//!
//! Text output escapes a name the way `ls -b` and `git` do, so each change is one line and
//! two different names never print alike: `\\` for a backslash, `\n`, `\t`, `\r`, and
//! `\ooo` (octal) for every other control byte, DEL and each byte that is not part of valid
//! UTF-8. JSON output carries a name as `path` when it is valid UTF-8, else as `path_hex`,
//! the hex of its bytes.
//!
//! Messages show a long path shortened ([`Short`]): a path deeper than PATH_MAX would
//! otherwise fill the terminal with kilobytes of one error line.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `path` escaped for one line of text (see the module docs).
pub fn quote(path: &Path) -> String {
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\{b:03o}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\{b:03o}");
        }
    }
    out
}

/// The JSON fields naming `path`: `{"path": "..."}` when it is valid UTF-8, else
/// `{"path_hex": "..."}`.
pub fn json_fields(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    match path.to_str() {
        Some(s) => m.insert("path".into(), s.into()),
        None => m.insert("path_hex".into(), hex(path.as_os_str().as_bytes()).into()),
    };
    m
}

/// Paths up to this many bytes are shown whole in messages.
const SHOWN_WHOLE: usize = 160;
/// Each component of a shortened path is cut to this many characters.
const SHOWN_NAME: usize = 24;

/// A path as an error message shows it: whole when short, else its first two and last two
/// components around `…`, with its depth and length, so a message stays one line.
pub(crate) struct Short<'a>(pub &'a Path);

impl std::fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0.as_os_str().as_bytes();
        if bytes.len() <= SHOWN_WHOLE {
            return write!(f, "{}", self.0.display());
        }
        let names: Vec<String> = self
            .0
            .components()
            .filter(|c| !matches!(c, std::path::Component::RootDir))
            .map(|c| {
                let name = c.as_os_str().to_string_lossy();
                match name.char_indices().nth(SHOWN_NAME) {
                    Some((cut, _)) => format!("{}…", &name[..cut]),
                    None => name.into_owned(),
                }
            })
            .collect();
        let root = if self.0.has_root() { "/" } else { "" };
        let depth = names.len();
        if depth <= 4 {
            write!(f, "{root}{}", names.join("/"))?;
        } else {
            write!(
                f,
                "{root}{}/{}/…/{}/{}",
                names[0],
                names[1],
                names[depth - 2],
                names[depth - 1]
            )?;
        }
        write!(f, " ({depth} levels, {} bytes)", bytes.len())
    }
}

/// What a message adds to an error that a path too long for a path-based call caused.
pub(crate) fn too_long_note(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENAMETOOLONG) {
        ": the path is longer than PATH_MAX (4096 bytes)"
    } else {
        ""
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The bytes [`hex`] wrote (either case); `None` for an odd length or a non-hex digit.
pub(crate) fn unhex(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn quoting_is_unambiguous_and_json_is_lossless() {
        let p = |b: &[u8]| Path::new(OsStr::from_bytes(b)).to_owned();
        assert_eq!(quote(&p(b"/etc/plain name")), "/etc/plain name");
        assert_eq!(quote(&p(b"/a\nb")), "/a\\nb");
        assert_eq!(quote(&p(b"/a\\nb")), "/a\\\\nb");
        assert_eq!(quote(&p(b"/x\xff\x01y")), "/x\\377\\001y");
        assert_eq!(quote(&p("/caf\u{e9}".as_bytes())), "/caf\u{e9}");
        assert_eq!(json_fields(&p(b"/ok"))["path"], "/ok");
        assert_eq!(json_fields(&p(b"/\xff"))["path_hex"], "2fff");
    }

    #[test]
    fn long_paths_are_shortened_in_messages() {
        assert_eq!(Short(Path::new("/etc/motd")).to_string(), "/etc/motd");
        let deep: std::path::PathBuf = std::iter::once("/up".to_owned())
            .chain((0..300).map(|i| format!("level-{i:03}-{}", "x".repeat(40))))
            .collect();
        let shown = Short(&deep).to_string();
        assert!(shown.len() < 200, "{shown}");
        assert!(shown.starts_with("/up/level-000-"), "{shown}");
        assert!(shown.contains("/…/level-298-"), "{shown}");
        let tail = format!("(301 levels, {} bytes)", deep.as_os_str().len());
        assert!(shown.ends_with(&tail), "{shown}");
        let e = std::io::Error::from_raw_os_error(libc::ENAMETOOLONG);
        assert!(too_long_note(&e).contains("PATH_MAX"));
    }
}
