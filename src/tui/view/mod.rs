//! Rendering: a pure function of the state. `areas` is the layout, shared
//! with the mouse handling so that a click lands where the row was drawn.
//! Panes are in `panes`, dialogs in `dialogs`, text fitting in `fit`.

mod dialogs;
pub mod fit;
mod panes;

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, Lower, Pane, Presence, RemoteState, Rpo};
pub use dialogs::help_lines;
use fit::{fit_items, truncate};

/// From this width the console shows jobs and log side by side, and
/// details under the timeline.
pub const WIDE: u16 = 100;
/// Below this the console says so instead of cutting words.
pub const MIN_W: u16 = 60;
pub const MIN_H: u16 = 16;

pub struct Theme {
    pub color: bool,
}

impl Theme {
    pub fn from_env() -> Theme {
        Theme {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    fn focus(&self, focused: bool) -> Style {
        if focused {
            self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        }
    }

    fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }

    fn rpo(&self, r: Rpo) -> (Style, &'static str) {
        match r {
            Rpo::Ok => (self.fg(Color::Green), "fresh"),
            Rpo::Late => (self.fg(Color::Yellow), "late"),
            Rpo::Stale => (self.fg(Color::Red).add_modifier(Modifier::BOLD), "STALE"),
            Rpo::VerifyFailed => (self.fg(Color::Red).add_modifier(Modifier::BOLD), "BROKEN"),
            Rpo::NeverBackedUp => (self.fg(Color::Magenta), "never"),
            Rpo::LastJobFailed => (self.fg(Color::Red).add_modifier(Modifier::BOLD), "FAILED"),
        }
    }

    /// A presence cell, full (`● held`) or compact (`●`).
    fn presence(&self, p: Presence, compact: bool) -> Span<'static> {
        let (full, short, style) = match p {
            Presence::Held => ("● held", "●", self.fg(Color::Green)),
            Presence::Missing => ("○ missing", "○", self.fg(Color::Yellow)),
            Presence::Unreachable => ("✗ n/a", "✗", self.fg(Color::Red)),
            Presence::Unknown => ("? …", "?", Style::default()),
        };
        Span::styled(if compact { short } else { full }, style)
    }
}

/// Where each part of the screen is; None for a pane not shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct Areas {
    pub header: Rect,
    pub tree: Option<Rect>,
    pub timeline: Option<Rect>,
    pub details: Option<Rect>,
    pub jobs: Option<Rect>,
    pub log: Option<Rect>,
    pub status: Rect,
    pub footer: Rect,
}

pub fn areas(area: Rect, app: &App) -> Areas {
    areas_for(area, app.lower, app.zoom.then_some(app.focus))
}

/// The layout for a lower-pane choice, with the pane `zoomed` (if any)
/// taking the whole middle.
pub fn areas_for(area: Rect, lower: Lower, zoomed: Option<Pane>) -> Areas {
    let mut a = Areas::default();
    if area.width < MIN_W || area.height < MIN_H {
        return a;
    }
    let wide = area.width >= WIDE;
    let lower_h = if area.height >= 30 || (!wide && lower == Lower::Details) {
        9
    } else {
        6
    };
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(6),
            Constraint::Length(lower_h),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .split(area);
    a.header = rows[0];
    a.status = rows[3];
    a.footer = rows[4];
    if let Some(focus) = zoomed {
        // The focused pane takes everything between header and status.
        let r = Rect::new(
            area.x,
            rows[1].y,
            area.width,
            rows[1].height + rows[2].height,
        );
        match focus {
            Pane::Tree => a.tree = Some(r),
            Pane::Timeline => a.timeline = Some(r),
            Pane::Details => a.details = Some(r),
            Pane::Jobs => a.jobs = Some(r),
            Pane::Log => a.log = Some(r),
        }
        return a;
    }
    let tree_w = if wide { 30 } else { 24 };
    let main = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Length(tree_w), Constraint::Min(30)])
        .split(rows[1]);
    a.tree = Some(main[0]);
    if wide && rows[1].height >= 16 {
        let right = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Min(6), Constraint::Length(9)])
            .split(main[1]);
        a.timeline = Some(right[0]);
        a.details = Some(right[1]);
    } else {
        a.timeline = Some(main[1]);
    }
    if wide {
        let bottom = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
            .split(rows[2]);
        a.jobs = Some(bottom[0]);
        a.log = Some(bottom[1]);
        if a.details.is_none() && lower == Lower::Details {
            a.log = None;
            a.details = Some(bottom[1]);
        }
    } else {
        match lower {
            Lower::Jobs => a.jobs = Some(rows[2]),
            Lower::Log => a.log = Some(rows[2]),
            Lower::Details => a.details = Some(rows[2]),
        }
    }
    a
}

pub fn render(f: &mut Frame, app: &App, theme: &Theme) {
    let area = f.area();
    if area.width < MIN_W || area.height < MIN_H {
        let p = Paragraph::new(vec![
            Line::from("lifeboat"),
            Line::from(format!(
                "This terminal is {}x{}; the console needs at least {MIN_W}x{MIN_H}.",
                area.width, area.height
            )),
            Line::from("Enlarge the window, or use the CLI (lifeboat status, lifeboat ls)."),
            Line::from("q quits."),
        ])
        .wrap(Wrap { trim: true });
        f.render_widget(p, area);
        return;
    }
    let a = areas(area, app);
    header(f, app, theme, a.header);
    let empty = app.tree().is_empty();
    if empty && !app.zoom {
        if let (Some(t), Some(tl)) = (a.tree, a.timeline) {
            panes::welcome(f, app, Rect::new(t.x, t.y, t.width + tl.width, t.height));
        }
    } else {
        if let Some(r) = a.tree {
            panes::tree(f, app, theme, r);
        }
        if let Some(r) = a.timeline {
            panes::timeline(f, app, theme, r);
        }
    }
    if let Some(r) = a.details {
        panes::details(f, app, theme, r);
    }
    if let Some(r) = a.jobs {
        panes::jobs(f, app, theme, r);
    }
    if let Some(r) = a.log {
        panes::log(f, app, theme, r);
    }
    status(f, app, theme, a.status);
    footer(f, app, a.footer);
    if let Some(d) = &app.dialog {
        dialogs::dialog(f, app, theme, d, area);
    }
}

fn header(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    // The long form when it fits, else the short one: never a cut word.
    let full = header_spans(app, theme, true);
    let width: usize = full.iter().map(|s| s.width()).sum();
    let spans = if width <= area.width as usize {
        full
    } else {
        header_spans(app, theme, false)
    };
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn header_spans(app: &App, theme: &Theme, wide: bool) -> Vec<Span<'static>> {
    let mut spans = vec![Span::styled(
        " lifeboat ",
        Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
    )];
    let count = app.backups.len();
    match &app.source {
        None if wide => spans.push(Span::raw(format!(
            " local {} ({count} backups) ",
            fit::shorten_path(&app.repo_path, 40)
        ))),
        None => spans.push(Span::raw(format!(" local: {count} backups "))),
        Some(r) => spans.push(Span::styled(
            format!(" VIEWING REMOTE {r}: {count} backups "),
            theme.fg(Color::Magenta).add_modifier(Modifier::BOLD),
        )),
    }
    for r in &app.remotes {
        let (style, text) = match &r.state {
            RemoteState::Connecting => (theme.fg(Color::Yellow), format!("{} connecting…", r.name)),
            RemoteState::Ok {
                latency_ms,
                backups,
            } if wide => (
                theme.fg(Color::Green),
                format!("{} up {latency_ms:.0}ms {backups} backups", r.name),
            ),
            RemoteState::Ok { .. } => (theme.fg(Color::Green), format!("{} up", r.name)),
            RemoteState::Unreachable(why) if wide => (
                theme.fg(Color::Red),
                format!("{} UNREACHABLE: {}", r.name, truncate(why, 28)),
            ),
            RemoteState::Unreachable(_) => (theme.fg(Color::Red), format!("{} ✗", r.name)),
        };
        spans.push(Span::raw("│ "));
        spans.push(Span::styled(text, style));
        spans.push(Span::raw(" "));
    }
    let running = app.running_jobs();
    if running > 0 {
        spans.push(Span::styled(
            format!("│ {running} running "),
            theme.fg(Color::Cyan),
        ));
    }
    if let Some(s) = app.refreshed_ago() {
        spans.push(Span::styled(
            format!(
                "│ {} {} ago",
                if wide { "refreshed" } else { "read" },
                fit::secs(s)
            ),
            Style::default().add_modifier(Modifier::DIM),
        ));
    }
    spans
}

/// One line that is always visible: what is being typed, or the latest
/// result, error or hint.
fn status(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let w = area.width as usize;
    let line = if let Some((pane, input)) = &app.typing {
        let label = if *pane == Pane::Timeline {
            "search"
        } else {
            "filter VMs"
        };
        let prefix = format!("{label}: ");
        let room = w.saturating_sub(prefix.len() + 1);
        let scroll = input.0.visual_scroll(room);
        let shown: String = input.value().chars().skip(scroll).collect();
        f.set_cursor_position((
            area.x + (prefix.len() + input.0.visual_cursor().saturating_sub(scroll)) as u16,
            area.y,
        ));
        Line::from(vec![
            Span::styled(prefix, theme.fg(Color::Cyan)),
            Span::raw(lifeboat_core::text::escape(&shown).into_owned()),
        ])
    } else if let Some(s) = &app.status {
        let text = lifeboat_core::text::escape(&s.text);
        if s.error {
            Line::from(Span::styled(
                truncate(&format!("✗ {text}"), w),
                theme.fg(Color::Red).add_modifier(Modifier::BOLD),
            ))
        } else {
            Line::from(truncate(&text, w))
        }
    } else {
        Line::from("")
    };
    f.render_widget(Paragraph::new(line), area);
}

/// The keys that matter for the focused pane, from the key map, as many
/// whole hints as fit.
fn footer(f: &mut Frame, app: &App, area: Rect) {
    let k = &app.keys;
    let mut items: Vec<String> = if app.typing.is_some() {
        vec![
            "type to filter".into(),
            "Enter keep".into(),
            "Esc clear".into(),
        ]
    } else {
        let remote = app.source.is_some();
        let push = if remote { "pull" } else { "push" };
        match app.focus {
            Pane::Tree => k.hints(&[
                ("", "Enter open"),
                ("filter", "filter"),
                ("backup", "back up"),
                ("push", if remote { "pull VM" } else { "push VM" }),
                ("push_all", if remote { "pull all" } else { "push all" }),
                ("source", "local/remote"),
                ("lower", "lower pane"),
                ("refresh", "refresh"),
            ]),
            Pane::Timeline => k.hints(&[
                ("restore", "restore"),
                ("push", push),
                ("compare", "compare"),
                ("compare_live", "vs live"),
                ("verify", "verify"),
                ("filter", "search"),
                ("zoom", "zoom"),
                ("lower", "lower pane"),
            ]),
            Pane::Jobs => k.hints(&[
                ("", "Enter job log"),
                ("cancel", "cancel"),
                ("zoom", "zoom"),
                ("lower", "lower pane"),
            ]),
            Pane::Log => k.hints(&[
                ("", "↑↓ scroll"),
                ("", "End follow"),
                ("zoom", "zoom"),
                ("lower", "lower pane"),
            ]),
            Pane::Details => {
                k.hints(&[("", "↑↓ scroll"), ("zoom", "zoom"), ("lower", "lower pane")])
            }
        }
    };
    items.push(format!("{} help", k.key("help")));
    items.push(format!("{} quit", k.key("quit")));
    let text = fit_items(&items, area.width as usize, " · ");
    f.render_widget(
        Paragraph::new(text).style(Style::default().add_modifier(Modifier::DIM)),
        area,
    );
}
