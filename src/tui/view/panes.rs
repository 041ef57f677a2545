//! The panes: VM tree, timeline, details, jobs, log, and the newcomer's
//! screen.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell as TCell, List, ListItem, ListState, Paragraph, Row, Sparkline, Table,
    TableState,
};
use ratatui::Frame;
use unicode_width::UnicodeWidthStr;

use lifeboat_core::text::escape;

use super::fit::{truncate, wrap};
use super::Theme;
use crate::output::{age, bytes};
use crate::tui::app::{App, JobState, JobView, Pane};

fn block<'a>(title: String, theme: &Theme, focused: bool) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .title(title)
        .border_style(theme.focus(focused))
}

/// What to do when there is nothing to show: a repository to create, a
/// demo to try, where the config is.
pub fn welcome(f: &mut Frame, app: &App, area: Rect) {
    let mut l: Vec<Line> = Vec::new();
    match (&app.source, &app.repo_problem) {
        (Some(r), _) => {
            l.push(Line::from(format!("{r} holds no backups yet.")));
            l.push(Line::from(format!(
                "Push from the local view: {} switches back, then {} pushes the selection, {} everything.",
                app.keys.key("source"),
                app.keys.key("push"),
                app.keys.key("push_all")
            )));
        }
        (None, problem) => {
            l.push(Line::from(Span::styled(
                "No backups here yet.",
                Style::default().add_modifier(Modifier::BOLD),
            )));
            l.push(Line::from(format!(
                "Local repository: {}",
                escape(&app.repo_path)
            )));
            if let Some(p) = problem {
                l.push(Line::from(format!("  {}", escape(p))));
            }
            l.push(Line::from(format!(
                "Config file: {}",
                app.config_path
                    .as_deref()
                    .map(escape)
                    .unwrap_or_else(|| "(none)".into())
            )));
            l.push(Line::from(""));
            l.push(Line::from("To start:"));
            for (cmd, what) in [
                ("lifeboat init", "create the repository"),
                (
                    "lifeboat backup VM --volume root=DISK",
                    "back up a disk (raw or qcow2)",
                ),
                ("lifeboat remote add NAME URL", "an off-site copy"),
                ("lifeboat demo", "try everything on a demo world"),
            ] {
                l.push(Line::from(format!("  {cmd:<40} {what}")));
            }
            l.push(Line::from(""));
            l.push(Line::from(format!(
                "{} lists every key · {} re-reads · {} quits",
                app.keys.key("help"),
                app.keys.key("refresh"),
                app.keys.key("quit")
            )));
        }
    }
    f.render_widget(
        Paragraph::new(l)
            .wrap(ratatui::widgets::Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" Welcome ")),
        area,
    );
}

pub fn tree(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let rows = app.tree();
    let inner = area.width.saturating_sub(2) as usize;
    // "STALE" and an age such as "12d" on the right; the name gets the rest.
    // With drills on record, a VM row also shows its last drill (✓ 2h).
    // Narrow, whole columns go (the drill mark, then the age) before a
    // name is cut below what tells VMs apart.
    let longest = rows
        .iter()
        .map(|r| {
            r.volume
                .as_ref()
                .map_or(r.vm.width() + 2, |v| v.width() + 3)
        })
        .max()
        .unwrap_or(4);
    let wanted = longest.min(12);
    let mut drill_w = if app.drills.is_empty() { 0 } else { 6 };
    let mut age_w = 4;
    if inner.saturating_sub(6 + age_w + drill_w) < wanted {
        drill_w = 0;
    }
    if inner.saturating_sub(6 + age_w + drill_w) < wanted {
        age_w = 0;
    }
    let state_w = 6 + age_w + drill_w;
    let items: Vec<ListItem> = rows
        .iter()
        .map(|r| {
            let (label, rpo, newest) = match &r.volume {
                // A running VM (its monitor answers) is marked ●.
                None if app
                    .live
                    .get(&r.vm)
                    .and_then(|o| o.run.as_ref())
                    .is_some_and(|r| r.running) =>
                {
                    let (newest, rpo) = app.recovery(&r.vm);
                    (format!("{} ●", r.vm), rpo, newest)
                }
                None => {
                    let (newest, rpo) = app.recovery(&r.vm);
                    (r.vm.clone(), rpo, newest)
                }
                Some(v) => (
                    format!(" └ {v}"),
                    app.rpo_volume(&r.vm, v),
                    app.newest_volume(&r.vm, v),
                ),
            };
            let (style, word) = theme.rpo(rpo);
            let age = newest
                .map(|t| age(&t, app.now))
                .unwrap_or_else(|| "-".into());
            let name_w = inner.saturating_sub(state_w).max(4);
            let name = truncate(&label, name_w);
            let pad = name_w.saturating_sub(name.width());
            let name_style = if r.volume.is_none() {
                Style::default().add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            let drill = match (drill_w, r.volume.is_none(), app.drills.get(&r.vm)) {
                (0, _, _) => Span::raw(""),
                (_, true, Some(d)) => {
                    let (mark, color) = match d.outcome {
                        lifeboat_core::drill::DrillOutcome::Pass => ("✓", Color::Green),
                        lifeboat_core::drill::DrillOutcome::Fail => ("✗", Color::Red),
                        lifeboat_core::drill::DrillOutcome::Cancelled
                        | lifeboat_core::drill::DrillOutcome::NotStarted => ("-", Color::Yellow),
                    };
                    Span::styled(
                        format!(" {mark}{:>4}", self::age(&d.ended_at, app.now)),
                        theme.fg(color),
                    )
                }
                _ => Span::raw(" ".repeat(drill_w)),
            };
            ListItem::new(Line::from(vec![
                Span::styled(format!("{name}{}", " ".repeat(pad)), name_style),
                drill,
                Span::styled(
                    if age_w > 0 {
                        format!("{word:>6}{age:>4}")
                    } else {
                        format!("{word:>6}")
                    },
                    style,
                ),
            ]))
        })
        .collect();
    let place = app.source.as_deref().unwrap_or("local");
    let title = match (&app.browser.filter, &app.typing) {
        (Some(f), Some((Pane::Tree, _))) => format!(" VMs ({place}) /{f}_ "),
        (Some(f), _) if !f.is_empty() => format!(" VMs ({place}) /{f} "),
        _ => format!(" VMs ({place}) "),
    };
    let list = List::new(items)
        .block(block(title, theme, app.focus == Pane::Tree))
        .highlight_style(theme.selected());
    let mut st = ListState::default();
    st.select((!rows.is_empty()).then_some(app.browser.tree_sel));
    f.render_stateful_widget(list, area, &mut st);
}

/// A timeline column: what it shows, how wide, and how long it stays
/// when the pane narrows (higher stays longer).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Col {
    Time,
    Age,
    Volume,
    Id,
    Data,
    New,
    Vfy,
    Note,
    Presence(usize),
}

impl Col {
    fn keep(self) -> u8 {
        match self {
            Col::Time => 100,
            Col::Volume => 90,
            Col::Presence(_) => 80,
            Col::Vfy => 70,
            Col::Data => 60,
            Col::Age => 50,
            Col::Id => 40,
            Col::New => 30,
            Col::Note => 20,
        }
    }
}

/// The columns that fit `inner` cells, whole: the least needed go first,
/// never part of a value. Presence columns narrow to their glyph before
/// data columns go, and the time drops its year before it goes at all.
/// Returns the columns with their widths and whether presence is compact.
fn fit_columns(inner: usize, vol_w: usize, remotes: usize) -> (Vec<(Col, usize)>, bool, bool) {
    let all = |time_w: usize, pw: usize| -> Vec<(Col, usize)> {
        let mut v = vec![
            (Col::Time, time_w),
            (Col::Age, 4),
            (Col::Volume, vol_w),
            (Col::Id, 12),
            (Col::Data, 9),
            (Col::New, 9),
            (Col::Vfy, 3),
            (Col::Note, 8),
        ];
        v.extend((0..remotes).map(|i| (Col::Presence(i), pw)));
        v
    };
    // Cells plus one space between columns.
    let need =
        |v: &[(Col, usize)]| v.iter().map(|(_, w)| w).sum::<usize>() + v.len().saturating_sub(1);
    let drop_to_fit = |mut v: Vec<(Col, usize)>, floor: u8| -> Option<Vec<(Col, usize)>> {
        while need(&v) > inner {
            let (i, _) = v
                .iter()
                .enumerate()
                .filter(|(_, (c, _))| c.keep() < floor)
                .min_by_key(|(_, (c, _))| c.keep())?;
            v.remove(i);
        }
        Some(v)
    };
    for (time_w, pw, floor) in [(16, 9, 50), (16, 3, 60), (16, 3, 90), (11, 3, 90)] {
        if let Some(v) = drop_to_fit(all(time_w, pw), floor) {
            return (v, pw == 3, time_w == 11);
        }
    }
    // Below every tier: the time, the volume and the presence glyphs, as
    // many as there are (the layout's minimum size is above this).
    let v = drop_to_fit(all(11, 3), 101).unwrap_or_default();
    (v, true, true)
}

/// Timeline columns that fit: time, volume, presence and verify the
/// longest, then data, age, id, new bytes and the note (`fit_columns`).
pub fn timeline(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let tl = app.timeline();
    let inner = area.width.saturating_sub(2) as usize;
    let columns = app.presence_columns();
    let vol_w = tl
        .iter()
        .map(|(k, _)| k.volume.width())
        .max()
        .unwrap_or(4)
        .clamp(6, 12);
    let (cols, compact, short_time) = fit_columns(inner, vol_w, columns.len());
    let time_fmt = if short_time {
        "%m-%d %H:%M"
    } else {
        "%Y-%m-%d %H:%M"
    };
    let header: Vec<String> = cols
        .iter()
        .map(|(c, w)| match c {
            Col::Time => "time".into(),
            Col::Age => "age".into(),
            Col::Volume => "volume".into(),
            Col::Id => "id".into(),
            Col::Data => "data".into(),
            Col::New => "new".into(),
            Col::Vfy => "vfy".into(),
            Col::Note => "note".into(),
            Col::Presence(i) => truncate(&columns[*i], *w),
        })
        .collect();
    let widths: Vec<Constraint> = cols
        .iter()
        .map(|(c, w)| match c {
            Col::Note => Constraint::Min(*w as u16),
            _ => Constraint::Length(*w as u16),
        })
        .collect();
    let rows: Vec<Row> = tl
        .iter()
        .map(|(k, m)| {
            let presence = app.presence(k);
            let cells: Vec<TCell> = cols
                .iter()
                .map(|(c, _)| match c {
                    Col::Time => TCell::from(m.created_at.format(time_fmt).to_string()),
                    Col::Age => TCell::from(age(&m.created_at, app.now)),
                    Col::Volume => TCell::from(k.volume.clone()),
                    Col::Id => TCell::from(k.id.short()),
                    Col::Data => TCell::from(bytes(m.stats.nonzero_bytes)),
                    Col::New => TCell::from(bytes(m.stats.new_stored_bytes)),
                    Col::Vfy => match app.verify.get(&k.id) {
                        Some(v) if v.ok => TCell::from(Span::styled("ok", theme.fg(Color::Green))),
                        Some(_) => TCell::from(Span::styled(
                            "BAD",
                            theme.fg(Color::Red).add_modifier(Modifier::BOLD),
                        )),
                        None => TCell::from("-"),
                    },
                    Col::Note => TCell::from(
                        escape(m.labels.note.as_deref().unwrap_or_default()).into_owned(),
                    ),
                    Col::Presence(i) => match presence.get(*i) {
                        Some(p) => TCell::from(theme.presence(*p, compact)),
                        None => TCell::from(""),
                    },
                })
                .collect();
            let marked = app.browser.marked.as_ref() == Some(k);
            Row::new(cells).style(if marked {
                theme.fg(Color::Magenta).add_modifier(Modifier::UNDERLINED)
            } else {
                Style::default()
            })
        })
        .collect();
    let on = app
        .source
        .as_ref()
        .map(|s| format!(" on {s}"))
        .unwrap_or_default();
    let search = match (&app.browser.search, &app.typing) {
        (Some(s), _) => format!(" /{s}"),
        (None, Some((Pane::Timeline, _))) => " /".into(),
        _ => String::new(),
    };
    let title = match app.selected_row() {
        Some(r) => format!(
            " Timeline {}{}{on} ({}){search} ",
            r.vm,
            r.volume.map(|v| format!("/{v}")).unwrap_or_default(),
            tl.len()
        ),
        None => format!(" Timeline{on} "),
    };
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(block(title, theme, app.focus == Pane::Timeline))
        .row_highlight_style(theme.selected());
    let mut st = TableState::default();
    st.select((!tl.is_empty()).then_some(app.browser.timeline_sel));
    f.render_stateful_widget(table, area, &mut st);
}

/// A line cut to `w` columns with `…` (styles of the spans kept).
fn fit_line(l: Line<'static>, w: usize) -> Line<'static> {
    if l.width() <= w {
        return l;
    }
    let mut left = w;
    let mut out = Vec::new();
    for span in l.spans {
        if left == 0 {
            break;
        }
        let sw = span.content.width();
        if sw < left {
            left -= sw;
            out.push(span);
        } else {
            // More follows: this span ends with `…` even when it would
            // just fit.
            out.push(Span::styled(
                truncate(&format!("{}…", span.content), left),
                span.style,
            ));
            left = 0;
        }
    }
    Line::from(out)
}

/// "policy nightly · next 11-28 02:30 · last run ok 3h ago · RPO ok".
fn policy_line(r: &lifeboat_core::rpo::VmRpo, now: chrono::DateTime<chrono::Utc>) -> String {
    let Some(p) = &r.policy else {
        return format!("policy  none · RPO {}", r.state.label());
    };
    format!(
        "policy  {} · next {} · last run {} · RPO {}",
        escape(p),
        r.next_run
            .map(|t| t.format("%m-%d %H:%M").to_string())
            .unwrap_or_else(|| "never".into()),
        r.last_run
            .as_ref()
            .map(|l| format!(
                "{} {} ago",
                format!("{:?}", l.outcome).to_lowercase(),
                age(&l.started_at, now)
            ))
            .unwrap_or_else(|| "-".into()),
        r.state.label()
    )
}

/// A VM's running state, its newest backup's consistency and whether the
/// next backup can read only what changed.
fn live_line(app: &App, vm: &str) -> Option<Line<'static>> {
    let o = app.live.get(vm);
    let last = app.last_capture(vm);
    if o.is_none() && last.is_none() {
        return None;
    }
    let run = match o.and_then(|o| o.run.as_ref()) {
        Some(r) if r.running && r.status == "running" => "running".into(),
        Some(r) if r.running => format!("running ({})", escape(&r.status)),
        Some(r) => escape(&r.status).into_owned(),
        None => "no qmp".into(),
    };
    let last = last
        .map(|c| c.consistency.to_string())
        .unwrap_or_else(|| "no capture record".into());
    let next = match o {
        None => "-".to_string(),
        Some(o) if o.volumes.is_empty() => "-".to_string(),
        Some(o) if o.volumes.iter().all(|v| v.incremental) && !o.volumes.is_empty() => {
            "incremental".into()
        }
        Some(o) => {
            let full: Vec<String> = o
                .volumes
                .iter()
                .filter(|v| !v.incremental)
                .map(|v| {
                    format!(
                        "{}: {}",
                        escape(&v.volume),
                        escape(v.reason.as_deref().unwrap_or("full"))
                    )
                })
                .collect();
            format!("full ({})", full.join("; "))
        }
    };
    let left = match o {
        Some(o) if !o.leftovers.is_empty() => format!(
            " · LEFTOVERS of a killed backup ({}): lifeboat vms --repair",
            o.leftovers.len()
        ),
        _ => String::new(),
    };
    Some(Line::from(format!(
        "live    {run} · last {last} · next {next}{left}"
    )))
}

pub fn details(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let chart = area.width >= 90;
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints(if chart {
            [Constraint::Percentage(62), Constraint::Percentage(38)]
        } else {
            [Constraint::Percentage(100), Constraint::Percentage(0)]
        })
        .split(area);
    let u = app.usage;
    let usage = format!(
        "repo    {} backups · {} of data · {} stored{}",
        app.backups.len(),
        bytes(u.logical),
        bytes(u.stored),
        u.dedup()
            .map(|d| format!(" · dedup {d:.1}x"))
            .unwrap_or_default()
    );
    let mut lines: Vec<Line> = match app.selected_backup() {
        Some((k, m)) => vec![
            Line::from(format!(
                "backup  {}/{} {} ({} ago)",
                k.vm,
                k.volume,
                m.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                age(&m.created_at, app.now)
            )),
            Line::from(format!("id      {}", k.id)),
            Line::from(format!(
                "size    {} ({}, {})  data {}  new {} in {} chunks",
                bytes(m.volume.virtual_size),
                m.volume.format,
                m.volume.role,
                bytes(m.stats.nonzero_bytes),
                bytes(m.stats.new_stored_bytes),
                m.stats.new_chunks
            )),
            Line::from(format!(
                "source  {}:{}  set {}",
                escape(&m.source.host),
                escape(&m.source.path),
                escape(&m.set.chars().take(12).collect::<String>()),
            )),
            Line::from(format!(
                "labels  note={} protected={} · index {} · parent {}",
                escape(m.labels.note.as_deref().unwrap_or("-")),
                m.labels.protected,
                m.index.short(),
                m.parent
                    .map(|p| p.short())
                    .unwrap_or_else(|| "(none)".into())
            )),
            match app.verify.get(&k.id) {
                Some(v) => Line::from(Span::styled(
                    format!(
                        "verify  {} ({}) {} ({} ago)",
                        if v.ok { "ok" } else { "FAILED" },
                        if v.deep { "deep" } else { "quick" },
                        v.at.format("%Y-%m-%d %H:%M"),
                        age(&v.at, app.now)
                    ),
                    if v.ok {
                        theme.fg(Color::Green)
                    } else {
                        theme.fg(Color::Red).add_modifier(Modifier::BOLD)
                    },
                )),
                None => Line::from(format!(
                    "verify  not verified yet: {} quick, {} deep",
                    app.keys.key("verify"),
                    app.keys.key("deep_verify")
                )),
            },
        ],
        None => vec![Line::from("no backup selected")],
    };
    if let Some(r) = app.selected_row().and_then(|row| app.rpo.get(&row.vm)) {
        lines.push(Line::from(policy_line(r, app.now)));
    }
    if let Some(d) = app.selected_row().and_then(|row| app.drills.get(&row.vm)) {
        lines.push(Line::from(Span::styled(
            format!(
                "drill   {} {} ago from {} · RTO {:.1}s · backup {}{}",
                d.outcome,
                age(&d.ended_at, app.now),
                escape(&d.source),
                d.rto_secs,
                d.backup_time
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| "-".into()),
                d.failed_phase
                    .as_ref()
                    .map(|p| format!(" · failed in {p}"))
                    .unwrap_or_default()
            ),
            if d.passed() {
                theme.fg(Color::Green)
            } else {
                theme.fg(Color::Red)
            },
        )));
    }
    // Second, where a short pane still shows it: what a backup of the VM
    // would be right now.
    if let Some(line) = app.selected_row().and_then(|row| live_line(app, &row.vm)) {
        lines.insert(1.min(lines.len()), line);
    }
    lines.push(Line::from(usage));
    // Whole lines, cut with `…` where they are wider than the pane (z
    // zooms it), scrolled when focused (↑↓).
    let inner_w = cols[0].width.saturating_sub(2) as usize;
    let visible = cols[0].height.saturating_sub(2) as usize;
    let scroll = app
        .browser
        .details_scroll
        .min(lines.len().saturating_sub(visible.max(1)));
    let lines: Vec<Line> = lines
        .into_iter()
        .skip(scroll)
        .map(|l| fit_line(l, inner_w))
        .collect();
    let more = if scroll > 0 { " ↑" } else { "" };
    f.render_widget(
        Paragraph::new(lines).block(block(
            format!(" Details{more} "),
            theme,
            app.focus == Pane::Details,
        )),
        cols[0],
    );
    if !chart {
        return;
    }
    // A log scale: the first (full) backup would flatten every later one.
    let tl = app.timeline();
    let max = tl
        .iter()
        .map(|(_, m)| m.stats.new_stored_bytes)
        .max()
        .unwrap_or(0);
    let log = |b: u64| (b as f64 + 1.0).log2();
    let floor = tl
        .iter()
        .map(|(_, m)| log(m.stats.new_stored_bytes))
        .fold(f64::INFINITY, f64::min)
        - 1.0;
    let mut data: Vec<u64> = tl
        .iter()
        .rev()
        .map(|(_, m)| ((log(m.stats.new_stored_bytes) - floor).max(0.0) * 16.0) as u64)
        .collect();
    let w = cols[1].width.saturating_sub(2) as usize;
    if data.len() > w {
        data.drain(..data.len() - w);
    }
    f.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!(" new/backup, log, max {} ", bytes(max))),
            )
            .data(&data)
            .style(theme.fg(Color::Cyan)),
        cols[1],
    );
}

/// One job on one line, the numbers first so that a narrow pane cuts the
/// title, not the rate or the ETA.
pub fn job_line(j: &JobView, now: chrono::DateTime<chrono::Utc>, w: usize) -> String {
    let id = if j.past() {
        "·".to_string()
    } else {
        format!("#{}", j.id)
    };
    let text = match &j.state {
        JobState::Running => match &j.progress {
            None => format!("{id} starting · {}", j.title),
            Some(s) => {
                let frac = s.job_fraction();
                let bar = if w >= 80 {
                    let n = 10;
                    let full = (frac * n as f64).round() as usize;
                    format!("▕{}{}▏ ", "█".repeat(full), "░".repeat(n - full))
                } else {
                    String::new()
                };
                let amount = if s.job_bytes_total > 0 {
                    format!(
                        "{:>3.0}% {}/{} ",
                        frac * 100.0,
                        bytes(s.job_bytes_done),
                        bytes(s.job_bytes_total)
                    )
                } else if s.objects_total > 0 {
                    format!(
                        "{:>3.0}% {}/{} ",
                        frac * 100.0,
                        s.objects_done,
                        s.objects_total
                    )
                } else {
                    String::new()
                };
                let rate = if s.bytes_per_sec > 0.0 {
                    format!("{}/s ", bytes(s.bytes_per_sec as u64))
                } else {
                    String::new()
                };
                let eta = s
                    .eta_secs
                    .map(|e| format!("ETA {} ", clock(e)))
                    .unwrap_or_default();
                format!("{id} {bar}{amount}{rate}{eta}{} · {}", s.phase, j.title)
            }
        },
        JobState::Done(m) => format!("{id} ✓ {} {} · {m}", when(j, now), j.title),
        JobState::Failed(e) => format!("{id} ✗ FAILED {} {} · {e}", when(j, now), j.title),
        JobState::Cancelled => format!("{id} cancelled {} {}", when(j, now), j.title),
    };
    truncate(&escape(&text), w)
}

fn when(j: &JobView, now: chrono::DateTime<chrono::Utc>) -> String {
    let t = j.ended_at.unwrap_or(j.started_at);
    if (now - t).num_hours() < 20 {
        t.format("%H:%M").to_string()
    } else {
        t.format("%m-%d %H:%M").to_string()
    }
}

/// `0:42`, `12:05`, `1:02:03`.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

pub fn jobs(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let running = app.running_jobs();
    let title = if running > 0 {
        format!(" Jobs ({running} running) ")
    } else {
        " Jobs ".into()
    };
    let b = block(title, theme, app.focus == Pane::Jobs);
    let inner = b.inner(area);
    f.render_widget(b, area);
    if app.jobs.list.is_empty() {
        f.render_widget(
            Paragraph::new(truncate(
                &format!(
                    "no jobs yet: {} restore, {} push, {} verify, {} compare",
                    app.keys.key("restore"),
                    app.keys.key("push"),
                    app.keys.key("verify"),
                    app.keys.key("compare")
                ),
                inner.width as usize,
            )),
            inner,
        );
        return;
    }
    // A drill or a cloud restore (the selected job, else the newest
    // running one) gets a panel below the list: its phases and its live
    // lines (the guest's serial console, the cloud's states).
    let featured = app
        .jobs
        .list
        .get(app.jobs.sel)
        .filter(|j| phased(j).is_some())
        .or_else(|| {
            app.jobs
                .list
                .iter()
                .rev()
                .find(|j| phased(j).is_some() && j.state == JobState::Running)
        });
    let (inner, panel) = match featured {
        Some(j) if inner.height >= 6 => {
            let list_h = (app.jobs.list.len() as u16).clamp(1, inner.height / 3);
            let list = Rect::new(inner.x, inner.y, inner.width, list_h);
            let rest = Rect::new(
                inner.x,
                inner.y + list_h,
                inner.width,
                inner.height - list_h,
            );
            (list, Some((j, rest)))
        }
        _ => (inner, None),
    };
    if let Some((j, area)) = panel {
        phase_panel(f, app, theme, j, area);
    }
    let visible = inner.height as usize;
    let start = app.jobs.sel.saturating_sub(visible.saturating_sub(1));
    for (row, (i, j)) in app
        .jobs
        .list
        .iter()
        .enumerate()
        .skip(start)
        .take(visible)
        .enumerate()
    {
        let r = Rect::new(inner.x, inner.y + row as u16, inner.width, 1);
        let mut style = match &j.state {
            JobState::Running => theme.fg(Color::Cyan),
            JobState::Done(_) => theme.fg(Color::Green),
            JobState::Failed(_) => theme.fg(Color::Red),
            JobState::Cancelled => theme.fg(Color::Yellow),
        };
        if j.past() {
            style = style.add_modifier(Modifier::DIM);
        }
        if i == app.jobs.sel && app.focus == Pane::Jobs {
            style = style.add_modifier(Modifier::REVERSED);
        }
        f.render_widget(
            Paragraph::new(job_line(j, app.now, inner.width as usize)).style(style),
            r,
        );
    }
}

/// The phases of a job shown with a panel, and what its live lines are.
fn phased(j: &JobView) -> Option<(&'static [&'static str], &'static str)> {
    if j.past() {
        None
    } else {
        match j.kind {
            super::super::app::JobKind::Drill => {
                Some((&lifeboat_core::drill::PHASES, "serial console"))
            }
            super::super::app::JobKind::CloudRestore => {
                Some((&lifeboat_core::cloud::PHASES, "cloud"))
            }
            super::super::app::JobKind::PlanDrill => Some((&[], "plan")),
            _ => None,
        }
    }
}

/// A drill's or cloud restore's phases (done with their time, the running
/// one with its elapsed time and bytes, the rest pending) and its live
/// lines.
fn phase_panel(f: &mut Frame, app: &App, theme: &Theme, j: &JobView, area: Rect) {
    let Some((phases, what)) = phased(j) else {
        return;
    };
    if j.kind == super::super::app::JobKind::PlanDrill {
        return plan_panel(f, theme, j, area);
    }
    let w = area.width as usize;
    let end = j.ended_at.unwrap_or(app.now);
    let mut spans: Vec<Span> = Vec::new();
    // The furthest phase seen: the ones before it are done even when they
    // were too quick to be sampled.
    let reached = phases
        .iter()
        .rposition(|n| j.phases.iter().any(|(p, _)| p == n));
    for (k, name) in phases.iter().enumerate() {
        let at = j.phases.iter().position(|(p, _)| p == name);
        let (text, style) = match at {
            None if reached.is_some_and(|r| k < r) => (format!("✓ {name}"), theme.fg(Color::Green)),
            Some(i) => {
                let started = j.phases[i].1;
                let next = j.phases.get(i + 1).map(|(_, t)| *t);
                let secs = (next.unwrap_or(end) - started).num_milliseconds() as f64 / 1000.0;
                let running = next.is_none() && j.state == JobState::Running;
                if running {
                    (format!("▶ {name} {secs:.0}s"), theme.fg(Color::Cyan))
                } else if next.is_none() && matches!(j.state, JobState::Failed(_)) {
                    (format!("✗ {name} {secs:.0}s"), theme.fg(Color::Red))
                } else {
                    (format!("✓ {name} {secs:.0}s"), theme.fg(Color::Green))
                }
            }
            None => (
                format!("· {name}"),
                Style::default().add_modifier(Modifier::DIM),
            ),
        };
        spans.push(Span::styled(text, style));
        spans.push(Span::raw("  "));
    }
    let mut lines = vec![Line::from(spans)];
    if let Some(p) = &j.progress {
        if j.state == JobState::Running {
            let eta = p
                .eta_secs
                .map(|e| format!("  ETA {}", crate::output::duration(e)))
                .unwrap_or_default();
            lines.push(Line::from(truncate(
                &format!(
                    "{}  {}/{}  {}/s{eta}",
                    escape(&p.phase),
                    bytes(p.job_bytes_done),
                    bytes(p.job_bytes_total),
                    bytes(p.bytes_per_sec as u64)
                ),
                w,
            )));
        }
    }
    let title = format!("── {what}: {} ", j.title);
    lines.push(Line::styled(
        truncate(
            &format!("{title}{}", "─".repeat(w.saturating_sub(title.width()))),
            w,
        ),
        theme.fg(Color::DarkGray),
    ));
    let room = (area.height as usize).saturating_sub(lines.len());
    let out = &j.output;
    for l in &out[out.len().saturating_sub(room)..] {
        lines.push(Line::from(truncate(&escape(l), w)));
    }
    f.render_widget(Paragraph::new(lines), area);
}

/// A plan drill: the plan's phase, then a panel per VM (its phase, how
/// long it has run, its console's newest lines), as many lines each as fit.
fn plan_panel(f: &mut Frame, theme: &Theme, j: &JobView, area: Rect) {
    let w = area.width as usize;
    let mut lines: Vec<Line> = Vec::new();
    if let Some(p) = &j.progress {
        lines.push(Line::from(truncate(
            &format!("{}  {}", escape(&p.phase), clock(p.elapsed_secs)),
            w,
        )));
    }
    let room = (area.height as usize).saturating_sub(lines.len());
    let each = (room / j.parts.len().max(1)).max(1);
    for part in &j.parts {
        let phase = &part.snapshot.phase;
        let color = if phase.starts_with("PASS") {
            Color::Green
        } else if phase.starts_with("FAIL") {
            Color::Red
        } else if phase.starts_with("CANCELLED") {
            Color::Yellow
        } else {
            Color::Cyan
        };
        let head = format!(
            "── {} · {} · {} ",
            escape(&part.name),
            escape(phase),
            clock(part.snapshot.elapsed_secs)
        );
        lines.push(Line::styled(
            truncate(
                &format!("{head}{}", "─".repeat(w.saturating_sub(head.width()))),
                w,
            ),
            theme.fg(color),
        ));
        let out = &part.output;
        let n = each.saturating_sub(1);
        for l in &out[out.len().saturating_sub(n)..] {
            lines.push(Line::from(truncate(&format!("  {}", escape(l)), w)));
        }
    }
    f.render_widget(Paragraph::new(lines), area);
}

/// The newest lines that fit, wrapped, unless scrolled back.
pub fn log(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let h = area.height.saturating_sub(2) as usize;
    let w = area.width.saturating_sub(2) as usize;
    let mut lines: Vec<String> = Vec::new();
    for entry in app.log.lines.iter().rev().skip(app.log.scroll) {
        let wrapped = wrap(&escape(entry), w);
        for l in wrapped.into_iter().rev() {
            lines.push(l);
        }
        if lines.len() >= h {
            break;
        }
    }
    lines.truncate(h);
    lines.reverse();
    let title = if app.log.scroll > 0 {
        format!(" Log (back {} · End follows) ", app.log.scroll)
    } else {
        " Log ".into()
    };
    f.render_widget(
        Paragraph::new(lines.into_iter().map(Line::from).collect::<Vec<_>>()).block(block(
            title,
            theme,
            app.focus == Pane::Log,
        )),
        area,
    );
}
