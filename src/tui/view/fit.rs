//! Fitting text into cells: by display width, never cutting a word the
//! admin needs without saying so (`…`).

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// `s` cut to `w` columns, with `…` when something was cut.
pub fn truncate(s: &str, w: usize) -> String {
    if s.width() <= w {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let cw = c.width().unwrap_or(0);
        if used + cw + 1 > w {
            break;
        }
        out.push(c);
        used += cw;
    }
    if w > 0 {
        out.push('…');
    }
    out
}

/// `s` wrapped into lines of at most `w` columns (at spaces where it can,
/// mid-word only for a word longer than a line).
pub fn wrap(s: &str, w: usize) -> Vec<String> {
    let w = w.max(1);
    let mut out = Vec::new();
    let mut line = String::new();
    let mut used = 0;
    for word in s.split(' ') {
        let ww = word.width();
        if used > 0 && used + 1 + ww > w {
            out.push(std::mem::take(&mut line));
            used = 0;
        }
        if used > 0 {
            line.push(' ');
            used += 1;
        }
        for c in word.chars() {
            let cw = c.width().unwrap_or(0);
            if used + cw > w {
                out.push(std::mem::take(&mut line));
                used = 0;
            }
            line.push(c);
            used += cw;
        }
    }
    out.push(line);
    out
}

/// As many whole items as fit in `w` columns, joined by `sep`; the last
/// two items (help, quit) are kept whatever else is dropped.
pub fn fit_items(items: &[String], w: usize, sep: &str) -> String {
    let keep = items.len().saturating_sub(2);
    let tail: Vec<&String> = items[keep..].iter().collect();
    let tail_w: usize = tail.iter().map(|s| s.width() + sep.width()).sum();
    let mut chosen: Vec<&String> = Vec::new();
    let mut used = tail_w;
    for it in &items[..keep] {
        let need = it.width() + sep.width();
        if used + need > w {
            break;
        }
        used += need;
        chosen.push(it);
    }
    chosen.extend(tail);
    truncate(
        &chosen
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(sep),
        w,
    )
}

/// A path cut from the left: the end of a path says the most.
pub fn shorten_path(p: &str, w: usize) -> String {
    let n = p.chars().count();
    if n <= w {
        return p.to_string();
    }
    let tail: String = p.chars().skip(n - w.saturating_sub(1)).collect();
    format!("…{tail}")
}

/// `42s`, `3m`, `2h`: short ages for the header.
pub fn secs(s: i64) -> String {
    match s {
        ..=59 => format!("{}s", s.max(0)),
        60..=3599 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_by_width() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("abcdefg", 3), vec!["abc", "def", "g"]);
        let items: Vec<String> = ["a 1", "b 2", "c 3", "? help", "q quit"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(fit_items(&items, 24, " · "), "a 1 · ? help · q quit");
        assert_eq!(shorten_path("/srv/backups/lifeboat", 10), "…/lifeboat");
    }
}
