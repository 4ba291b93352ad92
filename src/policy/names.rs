//! Names as `diff` shows them: every byte survives.
//!
//! Text output escapes a name the way `ls -b` and `git` do, so each change is one line and
//! two different names never print alike: `\\` for a backslash, `\n`, `\t`, `\r`, and
//! `\ooo` (octal) for every other control byte, DEL and each byte that is not part of valid
//! UTF-8. JSON output carries a name as `path` when it is valid UTF-8, else as `path_hex`,
//! the hex of its bytes.

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

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
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
}
