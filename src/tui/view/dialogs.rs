//! Dialogs: sized to their wrapped text and the screen, scrolling when
//! the text is longer than the screen, never cutting the last line.

use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use ratatui::Frame;

use lifeboat_core::format::chunkmap::regroup;
use lifeboat_core::text::escape;

use super::fit::{truncate, wrap};
use super::Theme;
use crate::tui::app::{App, Cell, Dialog, RemoteState, RestoreWhat};
use crate::tui::keymap;

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width.saturating_sub(2));
    let h = h.min(area.height.saturating_sub(2));
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn frame<'a>(f: &mut Frame, theme: &Theme, title: &str, lines: Vec<Line<'a>>, r: Rect) {
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(
                    " {} ",
                    truncate(title, r.width.saturating_sub(4) as usize)
                ))
                .border_style(theme.fg(Color::Cyan)),
        ),
        r,
    );
}

/// A text dialog: the lines wrapped to the dialog's width, a window of
/// them from `scroll`, and the hint line always shown.
struct TextBox<'a> {
    title: &'a str,
    text: &'a [String],
    scroll: usize,
    hint: &'a str,
    width: u16,
}

fn text_dialog(f: &mut Frame, theme: &Theme, area: Rect, b: TextBox) {
    let TextBox {
        title,
        text,
        scroll,
        hint,
        width,
    } = b;
    let w = width.min(area.width.saturating_sub(2));
    let inner_w = w.saturating_sub(2) as usize;
    let wrapped: Vec<String> = text
        .iter()
        .flat_map(|l| wrap(&escape(l), inner_w))
        .collect();
    // Margin, borders, and the blank and hint lines stay on screen.
    let max_body = area.height.saturating_sub(2 + 2 + 2) as usize;
    let body = wrapped.len().min(max_body);
    let scroll = scroll.min(wrapped.len().saturating_sub(body));
    let mut lines: Vec<Line> = wrapped
        .iter()
        .skip(scroll)
        .take(body)
        .map(|l| Line::from(l.clone()))
        .collect();
    let more = wrapped.len() > body;
    let hint = if more {
        format!(
            "{hint} · ↑↓ PgUp PgDn scroll ({}-{} of {})",
            scroll + 1,
            scroll + body,
            wrapped.len()
        )
    } else {
        hint.to_string()
    };
    lines.push(Line::from(""));
    lines.push(Line::styled(
        truncate(&hint, inner_w),
        theme.fg(Color::Cyan),
    ));
    let h = lines.len() as u16 + 2;
    frame(f, theme, title, lines, centered(area, w, h));
}

fn glyph(c: Cell, theme: &Theme) -> Span<'static> {
    // Distinct glyphs, not only hues: the map reads the same without colour.
    let (g, color) = match c {
        Cell::Same => ("█", Color::Green),
        Cell::Changed => ("X", Color::Red),
        Cell::Zero => ("·", Color::DarkGray),
        Cell::Missing => ("▒", Color::Yellow),
        Cell::Added => ("+", Color::Cyan),
        Cell::Removed => ("-", Color::Magenta),
    };
    Span::styled(g, theme.fg(color))
}

/// The legend's word for a cell; a map of one image against a repository
/// (it has missing cells) says held / missing locally.
fn cell_word(c: Cell, held_map: bool) -> &'static str {
    match c {
        Cell::Same if held_map => "held locally",
        Cell::Missing => "missing locally",
        Cell::Same => "same",
        Cell::Changed => "changed",
        Cell::Zero => "zero",
        Cell::Added => "added (B only)",
        Cell::Removed => "removed (A only)",
    }
}

/// The help screen's lines: every key, then the legend. The key handler
/// bounds scrolling by their number.
pub fn help_lines(app: &App) -> Vec<String> {
    let mut text: Vec<String> = app
        .keys
        .help()
        .iter()
        .map(|(k, d)| format!("{k:<10} {d}"))
        .collect();
    text.push(String::new());
    text.push("Legend".into());
    let (l, st) = (app.rpo_default.0 / 60, app.rpo_default.1 / 60);
    text.push(format!(
        "fresh      every volume's newest backup is within {l} h (or the policy's rpo_late)"
    ));
    text.push(format!(
        "late       a volume's newest backup is {l}–{st} h old"
    ));
    text.push(format!(
        "STALE      a volume's newest backup is older than {st} h (or rpo_stale)"
    ));
    text.push(
        "BROKEN     a volume's newest backup failed its last verify (status --rpo: verify failed)"
            .into(),
    );
    text.push("never      a volume has no backup in the repository shown".into());
    text.push("● held  ○ missing  ✗ repository unreachable  ? not listed yet".into());
    text.push("vfy: ok / BAD (last verify) / - (not verified)".into());
    text.push(String::new());
    text.push(format!(
        "Rebind keys in keys.toml in the config directory: {}",
        keymap::ACTIONS
            .iter()
            .map(|a| a.0)
            .take(6)
            .collect::<Vec<_>>()
            .join(", ")
            + ", …"
    ));
    text
}

pub fn dialog(f: &mut Frame, app: &App, theme: &Theme, d: &Dialog, area: Rect) {
    match d {
        Dialog::Confirm {
            title,
            lines,
            effect,
        } => text_dialog(
            f,
            theme,
            area,
            TextBox {
                title,
                text: lines,
                scroll: 0,
                // Says what each answer does: "cancel" would be ambiguous
                // when the question is whether to cancel a job.
                hint: match effect {
                    crate::tui::app::Effect::Cancel(_) => {
                        "Enter/y cancel the job · Esc/n keep it running"
                    }
                    _ => "Enter/y run · Esc/n do nothing",
                },
                width: 76,
            },
        ),
        Dialog::Message {
            title,
            lines,
            scroll,
        } => text_dialog(
            f,
            theme,
            area,
            TextBox {
                title,
                text: lines,
                scroll: *scroll,
                hint: "Esc close",
                width: 78,
            },
        ),
        Dialog::Help { scroll } => {
            let text = help_lines(app);
            text_dialog(
                f,
                theme,
                area,
                TextBox {
                    title: "Keys",
                    text: &text,
                    scroll: *scroll,
                    hint: "Esc close",
                    width: 76,
                },
            );
        }
        Dialog::Unlock { typed, error } => {
            let w = 76.min(area.width.saturating_sub(2));
            let fit = |s: &str| truncate(s, w.saturating_sub(2) as usize);
            let mut lines = vec![
                Line::from(fit(
                    "The repository is encrypted. Its passphrase, or its recovery key (lbk1-…):",
                )),
                // One dot per character, at most a field's width.
                Line::from(format!(
                    "> {}",
                    "•".repeat(typed.0.chars().count().min(w.saturating_sub(6) as usize))
                )),
            ];
            if let Some(e) = error {
                lines.push(Line::styled(fit(&escape(e)), theme.fg(Color::Red)));
            }
            lines.push(Line::styled(
                fit("Enter unlock · Esc leave it locked · Ctrl-U clear"),
                theme.fg(Color::Cyan),
            ));
            let h = lines.len() as u16 + 2;
            frame(
                f,
                theme,
                "Unlock the repository",
                lines,
                centered(area, w, h),
            );
        }
        Dialog::Prompt { title, input, what } => {
            let w = 76.min(area.width.saturating_sub(2));
            let inner = w.saturating_sub(4) as usize;
            let scroll = input.0.visual_scroll(inner);
            let shown: String = input.value().chars().skip(scroll).collect();
            let option = match what {
                RestoreWhat::Vm { define, .. } => format!(
                    "Tab: virsh define the VM after the restore: {}",
                    if *define {
                        "ON"
                    } else {
                        "off (domain XML only)"
                    }
                ),
                RestoreWhat::Instant { .. } => {
                    "QEMU runs the VM from the backup; its disks land here, then it runs on them"
                        .to_string()
                }
                RestoreWhat::Extract { .. } => {
                    "modes, times and symlinks kept (owners too as root)".to_string()
                }
                RestoreWhat::Volume(_) | RestoreWhat::FindFiles(_) => String::new(),
            };
            let lines = vec![
                Line::from(format!("> {}", escape(&shown))),
                Line::from(truncate(&option, w.saturating_sub(2) as usize)),
                Line::styled(
                    truncate(
                        "Enter accept · Esc cancel · Ctrl-U/W/A/E edit",
                        w.saturating_sub(2) as usize,
                    ),
                    theme.fg(Color::Cyan),
                ),
            ];
            let r = centered(area, w, 5);
            frame(f, theme, title, lines, r);
            f.set_cursor_position((
                r.x + 3 + (input.0.visual_cursor().saturating_sub(scroll)) as u16,
                r.y + 1,
            ));
        }
        Dialog::ChooseRemote { choice, scope } => {
            let names: Vec<&str> = app
                .remotes
                .iter()
                .filter(|r| matches!(r.state, RemoteState::Ok { .. }))
                .map(|r| r.name.as_str())
                .collect();
            let mut l: Vec<Line> = vec![Line::from(truncate(&scope.describe(), 40))];
            l.extend(names.iter().enumerate().map(|(i, n)| {
                if i == *choice {
                    Line::styled(format!("> {n}"), theme.selected())
                } else {
                    Line::from(format!("  {n}"))
                }
            }));
            l.push(Line::styled(
                "Enter push · Esc cancel",
                theme.fg(Color::Cyan),
            ));
            let h = l.len() as u16 + 2;
            frame(f, theme, "Push to which remote?", l, centered(area, 44, h));
        }
        Dialog::Plans { sel } => {
            let w = area.width.saturating_sub(4).clamp(40, 90);
            let tw = w.saturating_sub(2) as usize;
            let mut l: Vec<Line> = Vec::new();
            for (i, p) in app.plans.iter().enumerate() {
                let head = format!(
                    "{} {}  network {}  from {}",
                    if i == *sel { ">" } else { " " },
                    escape(&p.name),
                    escape(&p.network),
                    escape(&p.source)
                );
                l.push(if i == *sel {
                    Line::styled(truncate(&head, tw), theme.selected())
                } else {
                    Line::from(truncate(&head, tw))
                });
                for (vm, addr, after) in &p.members {
                    l.push(Line::from(truncate(
                        &format!(
                            "    {:<14} {:<15} {}",
                            escape(vm),
                            addr.as_deref().unwrap_or("-"),
                            if after.is_empty() {
                                "starts at once".to_string()
                            } else {
                                format!("after {}", escape(&after.join(", ")))
                            }
                        ),
                        tw,
                    )));
                }
                let rpo = match &p.rpo {
                    Ok((rpo, spread)) => format!(
                        "    service RPO {} here (spread {})",
                        lifeboat_core::drill::age(*rpo),
                        lifeboat_core::drill::age(*spread)
                    ),
                    Err(e) => format!("    no consistent point here: {}", escape(e)),
                };
                l.push(Line::from(truncate(&rpo, tw)));
                let (text, color) = match &p.last {
                    None => ("    never drilled".to_string(), Color::Yellow),
                    Some(r) => (
                        format!(
                            "    last drill {}: {} (service RTO {:.1}s){}",
                            r.started_at.format("%Y-%m-%d %H:%M"),
                            r.outcome,
                            r.rto_secs,
                            r.failed_vm
                                .as_deref()
                                .map(|v| format!(", failed at {}", escape(v)))
                                .unwrap_or_default()
                        ),
                        if r.passed() { Color::Green } else { Color::Red },
                    ),
                };
                l.push(Line::styled(truncate(&text, tw), theme.fg(color)));
            }
            l.push(Line::styled(
                "D drill the plan · j/k move · Esc close",
                theme.fg(Color::Cyan),
            ));
            let h = (l.len() as u16 + 2).min(area.height);
            frame(f, theme, "Recovery plans", l, centered(area, w, h));
        }
        Dialog::ChooseDrillSource {
            vm,
            sources,
            choice,
        } => {
            let mut l: Vec<Line> = vec![
                Line::from(truncate(
                    &format!("Restore {vm}'s newest set, verify it, boot it, check it."),
                    50,
                )),
                Line::from("Nothing is written over; scratch files are removed."),
            ];
            l.extend(sources.iter().enumerate().map(|(i, n)| {
                let default = app.drill_defaults.get(vm) == Some(n);
                let label = format!("{n}{}", if default { "  (default)" } else { "" });
                if i == *choice {
                    Line::styled(format!("> {label}"), theme.selected())
                } else {
                    Line::from(format!("  {label}"))
                }
            }));
            l.push(Line::styled(
                "Enter drill · Esc cancel",
                theme.fg(Color::Cyan),
            ));
            let h = l.len() as u16 + 2;
            frame(
                f,
                theme,
                "Drill from which repository?",
                l,
                centered(area, 56, h),
            );
        }
        Dialog::ChooseCloud {
            label,
            targets,
            choice,
            ..
        } => {
            let mut l: Vec<Line> = vec![
                Line::from(truncate(&format!("Bring up {label} in a cloud."), 54)),
                Line::from("The plan is shown first; nothing is created before y."),
            ];
            l.extend(targets.iter().enumerate().map(|(i, n)| {
                let state = app
                    .cloud_checks
                    .iter()
                    .find(|c| &c.target == n)
                    .map(|c| {
                        if c.ok {
                            "  (checked ok)"
                        } else {
                            "  (check FAILED)"
                        }
                    })
                    .unwrap_or("");
                let label = format!("{n}{state}");
                if i == *choice {
                    Line::styled(format!("> {label}"), theme.selected())
                } else {
                    Line::from(format!("  {label}"))
                }
            }));
            l.push(Line::styled(
                "Enter plan · Esc cancel",
                theme.fg(Color::Cyan),
            ));
            let h = l.len() as u16 + 2;
            frame(
                f,
                theme,
                "Restore into which cloud?",
                l,
                centered(area, 60, h),
            );
        }
        Dialog::Files(v) => files_dialog(f, theme, v, area),
        Dialog::QuitWhileRunning => {
            let l = vec![
                Line::from(format!(
                    "{} job(s) still running; quitting cancels them.",
                    app.running_jobs()
                )),
                Line::from("Nothing half-done becomes visible; running again resumes;"),
                Line::from("a cloud restore first removes what it created."),
                Line::styled("y quit · Esc stay", theme.fg(Color::Cyan)),
            ];
            let h = l.len() as u16 + 2;
            frame(f, theme, "Quit?", l, centered(area, 64, h));
        }
        Dialog::Compare {
            title,
            cells,
            summary,
            held,
        } => compare(f, theme, area, title, cells, summary, *held),
    }
}

/// The chunk map, regrouped when the screen cannot hold every cell, so
/// the last row (often where images differ) is never cut off.
fn compare(
    f: &mut Frame,
    theme: &Theme,
    area: Rect,
    title: &str,
    cells: &[Cell],
    summary: &[String],
    held_map: bool,
) {
    let w = 68.min(area.width.saturating_sub(2));
    let inner = w.saturating_sub(2) as usize;
    let mut text: Vec<String> = summary
        .iter()
        .flat_map(|s| wrap(&escape(s), inner))
        .collect();
    let mut kinds: Vec<Cell> = Vec::new();
    for c in cells {
        if !kinds.contains(c) {
            kinds.push(*c);
        }
    }
    kinds.sort_by_key(|c| *c as u8);
    let legend: Vec<Span> = kinds
        .iter()
        .flat_map(|c| {
            [
                glyph(*c, theme),
                Span::raw(format!(" {}  ", cell_word(*c, held_map))),
            ]
        })
        .collect();
    // Rows the screen leaves for the map: borders, summary, legend, hint.
    let room = (area.height as usize).saturating_sub(2 + 2 + text.len() + 1 + 1);
    let per_row = inner.max(1);
    let (shown, merged) = if cells.len() > room * per_row {
        regroup(cells, room * per_row)
    } else {
        (cells.to_vec(), 1)
    };
    if merged > 1 {
        text.push(format!("(small screen: 1 glyph = {merged} cells)"));
    }
    let mut lines: Vec<Line> = text.into_iter().map(Line::from).collect();
    lines.push(Line::from(legend));
    for row in shown.chunks(per_row) {
        lines.push(Line::from(
            row.iter().map(|c| glyph(*c, theme)).collect::<Vec<_>>(),
        ));
    }
    lines.push(Line::styled("Esc close", theme.fg(Color::Cyan)));
    let h = lines.len() as u16 + 2;
    frame(f, theme, title, lines, centered(area, w, h));
}

/// The file browser: where it is, the rows (the selected one marked), and
/// what reading cost. Names come from the backup: escaped.
fn files_dialog(f: &mut Frame, theme: &Theme, v: &crate::tui::app::files::FilesView, area: Rect) {
    let w = 100.min(area.width.saturating_sub(2));
    let h = area.height.saturating_sub(4).max(8);
    let inner = w.saturating_sub(4) as usize;
    let rows_shown = h.saturating_sub(5) as usize;
    let place = match (&v.find, &v.path) {
        (Some(t), p) => format!(
            "names holding {:?} under {}",
            t,
            p.as_deref().unwrap_or("every filesystem")
        ),
        (None, Some(p)) => p.clone(),
        (None, None) => "filesystems".into(),
    };
    let mut l: Vec<Line> = vec![Line::from(truncate(&escape(&place), inner))];
    let first = v.selected.saturating_sub(rows_shown.saturating_sub(1));
    if v.loading {
        l.push(Line::from("reading the backup…"));
    } else if let Some(e) = &v.error {
        l.push(Line::styled(
            truncate(&escape(e), inner),
            theme.fg(Color::Red),
        ));
    } else if v.rows.is_empty() {
        l.push(Line::from("(nothing)"));
    }
    if !v.loading {
        for (i, r) in v.rows.iter().enumerate().skip(first).take(rows_shown) {
            let text = truncate(&format!("{}  {}", r.detail, escape(&r.name)), inner);
            l.push(if i == v.selected {
                Line::styled(format!("> {text}"), theme.selected())
            } else {
                Line::from(format!("  {text}"))
            });
        }
    }
    l.push(Line::from(truncate(&v.cost, inner)));
    l.push(Line::styled(
        truncate(
            "Enter open · Backspace up · / search · e extract · Esc close",
            inner,
        ),
        theme.fg(Color::Cyan),
    ));
    let title = format!(
        "Files of {}/{}@{}",
        v.key.vm,
        v.key.volume,
        v.key.id.short()
    );
    frame(f, theme, &title, l, centered(area, w, h));
}
