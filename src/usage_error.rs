//! clap's usage errors as one ovlrun line: clap's whole message (missing argument names,
//! valid values, tips) joined onto one line, then the usage it printed.

/// `text` (clap's rendered error, plain) as one line without the `ovlrun: ` prefix, e.g.
/// `the following required arguments were not provided: <ID> (usage: ovlrun diff <ID>)`.
pub fn one_line(text: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut usage = None;
    let mut in_usage = false;
    for line in text.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("Usage:") {
            usage = Some(u.trim().to_owned());
            in_usage = true;
        } else if line.is_empty() {
            in_usage = false;
        } else if !in_usage && !line.starts_with("For more information") {
            parts.push(line.trim_start_matches("error: ").to_owned());
        }
    }
    let mut out = String::new();
    for p in parts {
        // A list under a heading ending in ':' reads as `heading: a, b`.
        let sep = if out.is_empty() {
            ""
        } else if out.ends_with(':') || p.starts_with('[') {
            " "
        } else if p.starts_with("tip:") {
            "; "
        } else {
            ", "
        };
        out.push_str(sep);
        out.push_str(&p);
    }
    match usage {
        Some(u) => format!("{out} (usage: {u})"),
        None => format!("{out} (see ovlrun --help)"),
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn missing_arguments_are_named_with_the_usage() {
        let text = "error: the following required arguments were not provided:\n  --lower <DIR>\n  \
                    <MOUNTPOINT>\n\nUsage: ovlrun mount --lower <DIR> <MOUNTPOINT>\n\nFor more \
                    information, try '--help'.\n";
        assert_eq!(
            one_line(text),
            "the following required arguments were not provided: --lower <DIR>, <MOUNTPOINT> \
             (usage: ovlrun mount --lower <DIR> <MOUNTPOINT>)"
        );
    }

    #[test]
    fn valid_values_and_tips_stay() {
        let text = "error: invalid value 'comit' for '--policy <POLICY>'\n  [possible values: \
                    preserve, commit]\n\n  tip: a similar value exists: 'commit'\n\nFor more \
                    information, try '--help'.\n";
        assert_eq!(
            one_line(text),
            "invalid value 'comit' for '--policy <POLICY>' [possible values: preserve, commit]; \
             tip: a similar value exists: 'commit' (see ovlrun --help)"
        );
    }

    #[test]
    fn a_multi_line_usage_keeps_its_first_line() {
        let text = "error: unexpected argument '--x' found\n\nUsage: ovlrun [OPTIONS] [CMD]...\n       \
                    ovlrun <COMMAND>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(text),
            "unexpected argument '--x' found (usage: ovlrun [OPTIONS] [CMD]...)"
        );
    }
}
