//! Human formatting shared by the subcommands.

use chrono::{DateTime, Utc};

pub use lifeboat_core::text::bytes;

/// An error with its causes, each said once (see `text::join_causes`).
pub fn describe(e: &anyhow::Error) -> String {
    lifeboat_core::text::join_causes(e.chain().map(|c| c.to_string()))
}

pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

pub fn age(t: &DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - *t).num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 60 {
        format!("{secs:.1}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

pub use lifeboat_core::text::parse_size;

/// Prints rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(|s| s.as_str()).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("M").is_err());
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
