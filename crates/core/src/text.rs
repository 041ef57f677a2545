//! Text that came from a repository or a peer is hostile: a backup note, a
//! source path, a server's error message may carry terminal control bytes
//! that recolour, retitle or rewrite a terminal. Everything such text
//! passes through here before it reaches a terminal.

use std::borrow::Cow;

/// Whether a character must not reach a terminal raw: C0 and C1 controls,
/// DEL, and the Unicode bidirectional overrides that reorder what is shown.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The text with every unsafe character written as a visible escape
/// (`\x1b`, `\u{202e}`); newlines and tabs too, so one value stays on one
/// line. Borrowed when nothing needed escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// A byte count for people: `617.0 MiB`, `88 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses sizes like `4M`, `4MiB`, `65536`, `1G` (binary units); a rate
/// may end in `/s` (`8M/s`).
/// A duration the way an admin says it: `90s`, `15 min`, `6 h`, `7 d`
/// (whole units only when exact; otherwise the larger unit with a fraction).
pub fn duration_words(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        _ if s < 7200 => format!("{} min", s / 60),
        _ if s < 2 * 86_400 => {
            if s.is_multiple_of(3600) {
                format!("{} h", s / 3600)
            } else {
                format!("{:.1} h", s as f64 / 3600.0)
            }
        }
        _ if s.is_multiple_of(86_400) => format!("{} d", s / 86_400),
        _ => format!("{:.1} d", s as f64 / 86_400.0),
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 4M or 65536"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size unit in {s:?}: use K, M or G")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// An error and its causes on one line, each cause once: many errors
/// already quote their cause (`reading X: Permission denied (os error
/// 13)`), and printing the chain again would repeat it.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    join_causes(std::iter::successors(Some(e), |c| c.source()).map(|c| c.to_string()))
}

/// Messages of an error chain joined with `: `, each said once (a cause
/// already quoted by an outer message, or empty, is left out).
pub fn join_causes(messages: impl IntoIterator<Item = String>) -> String {
    let mut out = String::new();
    for m in messages {
        if m.is_empty() || out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out
}

/// Like `escape`, but keeps line breaks (for multi-line messages).
pub fn escape_lines(s: &str) -> String {
    s.split('\n')
        .map(|l| escape(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A word for a POSIX shell: as it is when it is plain, else in single
/// quotes (a quote inside closed, escaped and reopened).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=.,:/+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_bidi() {
        assert_eq!(escape("plain note"), "plain note");
        assert!(matches!(escape("ok"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape("x\u{9b}31m"), "x\\x9b31m");
        assert_eq!(escape("l\nr\t\x7f"), "l\\x0ar\\x09\\x7f");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape_lines("a\x07\nb"), "a\\x07\nb");
        assert_eq!(escape("grüße"), "grüße");
    }
}
