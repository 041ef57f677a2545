//! Rendering: a pure function of the state.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell as TCell, Clear, Gauge, List, ListItem, ListState, Paragraph, Row,
    Sparkline, Table, TableState, Wrap,
};
use ratatui::Frame;

use lifeboat_core::text::escape;

use super::app::{App, Cell, Dialog, JobState, Pane, RemoteState, Rpo};
use crate::output::{age, bytes};

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
            Rpo::Fresh => (self.fg(Color::Green), "fresh"),
            Rpo::Late => (self.fg(Color::Yellow), "late"),
            Rpo::Stale => (self.fg(Color::Red).add_modifier(Modifier::BOLD), "STALE"),
            Rpo::Never => (self.fg(Color::Magenta), "never"),
        }
    }
}

pub fn render(f: &mut Frame, app: &App, theme: &Theme) {
    let area = f.area();
    if area.width < 40 || area.height < 12 {
        let p = Paragraph::new(vec![
            Line::from("lifeboat"),
            Line::from(format!(
                "terminal {}x{} is too small",
                area.width, area.height
            )),
            Line::from("enlarge to at least 40x12; q quits"),
        ])
        .wrap(Wrap { trim: true });
        f.render_widget(p, area);
        return;
    }
    let roomy = area.height >= 30;
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(8),
            Constraint::Length(if roomy { 9 } else { 5 }),
            Constraint::Length(1),
        ])
        .split(area);
    header(f, app, theme, rows[0]);
    let tree_w = if area.width >= 100 { 30 } else { 24 };
    let main = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Length(tree_w), Constraint::Min(30)])
        .split(rows[1]);
    tree(f, app, theme, main[0]);
    if area.width >= 100 && rows[1].height >= 16 {
        let right = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Min(6), Constraint::Length(9)])
            .split(main[1]);
        timeline(f, app, theme, right[0]);
        details(f, app, theme, right[1]);
    } else {
        timeline(f, app, theme, main[1]);
    }
    if area.width >= 100 {
        let bottom = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
            .split(rows[2]);
        jobs(f, app, theme, bottom[0]);
        log(f, app, bottom[1]);
    } else {
        jobs(f, app, theme, rows[2]);
    }
    footer(f, app, rows[3]);
    if let Some(d) = &app.dialog {
        dialog(f, app, theme, d, area);
    }
}

fn header(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let mut spans = vec![Span::styled(
        " lifeboat ",
        Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
    )];
    match &app.source {
        None => spans.push(Span::raw(format!(
            " local {} ({} backups) ",
            app.repo_path,
            app.backups.len()
        ))),
        Some(r) => spans.push(Span::styled(
            format!(" VIEWING REMOTE {r} ({} backups) ", app.backups.len()),
            theme.fg(Color::Magenta).add_modifier(Modifier::BOLD),
        )),
    }
    for r in &app.remotes {
        let (style, text) = match &r.state {
            RemoteState::Connecting => {
                (theme.fg(Color::Yellow), format!("{}: connecting…", r.name))
            }
            RemoteState::Ok {
                latency_ms,
                backups,
            } => (
                theme.fg(Color::Green),
                format!("{}: up {latency_ms:.0}ms {backups} backups", r.name),
            ),
            RemoteState::Unreachable(_) => {
                (theme.fg(Color::Red), format!("{}: UNREACHABLE", r.name))
            }
        };
        spans.push(Span::raw("│ "));
        spans.push(Span::styled(text, style));
        spans.push(Span::raw(" "));
    }
    let running = app.running_jobs();
    if running > 0 {
        spans.push(Span::styled(
            format!("│ {running} job(s) running"),
            theme.fg(Color::Cyan),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn tree(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let rows = app.tree();
    let items: Vec<ListItem> = rows
        .iter()
        .map(|r| match &r.volume {
            None => {
                let (style, word) = theme.rpo(app.rpo(&r.vm));
                let age = app
                    .newest(&r.vm)
                    .map(|t| age(&t, app.now))
                    .unwrap_or_else(|| "-".into());
                let name_w = (area.width as usize).saturating_sub(14).clamp(6, 16);
                let name: String = r.vm.chars().take(name_w).collect();
                ListItem::new(Line::from(vec![
                    Span::styled(
                        format!("{name:<name_w$}"),
                        Style::default().add_modifier(Modifier::BOLD),
                    ),
                    Span::styled(format!("{word:>6}{age:>5}"), style),
                ]))
            }
            Some(v) => ListItem::new(format!("  └ {v}")),
        })
        .collect();
    let place = app.source.as_deref().unwrap_or("local");
    let title = match &app.filter {
        Some(f) if app.filtering => format!(" VMs ({place}) /{f}_ "),
        Some(f) => format!(" VMs ({place}) /{f} "),
        None => format!(" VMs ({place}) "),
    };
    let list = List::new(items)
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(title)
                .border_style(theme.focus(app.focus == Pane::Tree)),
        )
        .highlight_style(theme.selected());
    let mut st = ListState::default();
    st.select((!rows.is_empty()).then_some(app.tree_sel));
    f.render_stateful_widget(list, area, &mut st);
}

fn timeline(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let tl = app.timeline();
    let wide = area.width >= 90;
    let narrow = area.width < 58;
    let mut header = vec![
        "time".to_string(),
        "volume".into(),
        "id".into(),
        "data".into(),
        "new".into(),
    ];
    if narrow {
        header = vec!["time".to_string(), "id".into(), "data".into()];
    }
    if wide {
        header.push("note".into());
    }
    let columns = app.presence_columns();
    header.extend(
        columns
            .iter()
            .map(|r| r.chars().take(8).collect::<String>()),
    );
    let rows: Vec<Row> = tl
        .iter()
        .map(|(k, m)| {
            let mut cells = if narrow {
                vec![
                    TCell::from(m.created_at.format("%d %H:%M").to_string()),
                    TCell::from(k.id.short()),
                    TCell::from(bytes(m.stats.nonzero_bytes)),
                ]
            } else {
                vec![
                    TCell::from(m.created_at.format("%m-%d %H:%M").to_string()),
                    TCell::from(k.volume.clone()),
                    TCell::from(k.id.short()),
                    TCell::from(bytes(m.stats.nonzero_bytes)),
                    TCell::from(bytes(m.stats.new_stored_bytes)),
                ]
            };
            if wide {
                cells.push(TCell::from(
                    escape(m.labels.note.as_deref().unwrap_or_default()).into_owned(),
                ));
            }
            for p in app.presence(k) {
                cells.push(match p {
                    Some(true) => TCell::from(Span::styled("● held", theme.fg(Color::Green))),
                    Some(false) => TCell::from(Span::styled("○ missing", theme.fg(Color::Yellow))),
                    None => TCell::from("? "),
                });
            }
            let marked = app.marked.as_ref() == Some(k);
            Row::new(cells).style(if marked {
                theme.fg(Color::Magenta)
            } else {
                Style::default()
            })
        })
        .collect();
    let mut widths = if narrow {
        vec![
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Length(9),
        ]
    } else {
        vec![
            Constraint::Length(11),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(9),
        ]
    };
    if wide {
        widths.push(Constraint::Min(8));
    }
    widths.extend(columns.iter().map(|_| Constraint::Length(9)));
    let on = app
        .source
        .as_ref()
        .map(|s| format!(" on {s}"))
        .unwrap_or_default();
    let title = match app.selected_row() {
        Some(r) => format!(
            " Timeline {}{}{on} ",
            r.vm,
            r.volume.map(|v| format!("/{v}")).unwrap_or_default()
        ),
        None => format!(" Timeline{on} "),
    };
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(title)
                .border_style(theme.focus(app.focus == Pane::Timeline)),
        )
        .row_highlight_style(theme.selected());
    let mut st = TableState::default();
    st.select((!tl.is_empty()).then_some(app.timeline_sel));
    f.render_stateful_widget(table, area, &mut st);
}

fn details(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(62), Constraint::Percentage(38)])
        .split(area);
    let lines: Vec<Line> = match app.selected_backup() {
        Some((k, m)) => vec![
            Line::from(format!("id      {}", k.id)),
            Line::from(format!("index   {}", m.index)),
            Line::from(format!(
                "parent  {}",
                m.parent
                    .map(|p| p.short())
                    .unwrap_or_else(|| "(none)".into())
            )),
            Line::from(format!(
                "set     {}  source {}:{}",
                escape(&m.set.chars().take(12).collect::<String>()),
                escape(&m.source.host),
                escape(&m.source.path)
            )),
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
                "labels  note={} protected={}",
                escape(m.labels.note.as_deref().unwrap_or("-")),
                m.labels.protected
            )),
            Line::from(format!("verify  {}", "run v / V to check")),
        ],
        None => vec![Line::from("no backup selected")],
    };
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Details ")),
        cols[0],
    );
    let mut data: Vec<u64> = app
        .timeline()
        .iter()
        .rev()
        .map(|(_, m)| m.stats.new_stored_bytes >> 10)
        .collect();
    if data.len() > cols[1].width as usize {
        data.drain(..data.len() - cols[1].width as usize);
    }
    f.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" new bytes / backup "),
            )
            .data(&data)
            .style(theme.fg(Color::Cyan)),
        cols[1],
    );
}

fn jobs(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" Jobs ")
        .border_style(theme.focus(app.focus == Pane::Jobs));
    let inner = block.inner(area);
    f.render_widget(block, area);
    if app.jobs.is_empty() {
        f.render_widget(
            Paragraph::new("no jobs yet: p push, r restore, v verify, c compare"),
            inner,
        );
        return;
    }
    let visible = inner.height as usize;
    let start = app.job_sel.saturating_sub(visible.saturating_sub(1));
    for (row, (i, j)) in app
        .jobs
        .iter()
        .enumerate()
        .skip(start)
        .take(visible)
        .enumerate()
    {
        let r = Rect::new(inner.x, inner.y + row as u16, inner.width, 1);
        let sel = i == app.job_sel && app.focus == Pane::Jobs;
        let (label, ratio, style) = match &j.state {
            JobState::Running => {
                let s = j.progress.clone();
                let text = s
                    .as_ref()
                    .map(|s| {
                        format!(
                            "#{} {} — {} {}/{} {}/s ETA {}",
                            j.id,
                            j.title,
                            s.phase,
                            bytes(s.bytes_done),
                            bytes(s.bytes_total),
                            bytes(s.bytes_per_sec as u64),
                            s.eta_secs
                                .map(|e| format!("{e:.0}s"))
                                .unwrap_or_else(|| "-".into())
                        )
                    })
                    .unwrap_or_else(|| format!("#{} {} — starting", j.id, j.title));
                (
                    text,
                    s.map(|s| s.fraction()).unwrap_or(0.0),
                    theme.fg(Color::Cyan),
                )
            }
            JobState::Done(m) => (
                format!("#{} ✓ done: {m} — {}", j.id, j.title),
                1.0,
                theme.fg(Color::Green),
            ),
            JobState::Failed(e) => (
                format!("#{} ✗ FAILED: {e} — {}", j.id, j.title),
                0.0,
                theme.fg(Color::Red),
            ),
            JobState::Cancelled => (
                format!("#{} cancelled — {}", j.id, j.title),
                0.0,
                theme.fg(Color::Yellow),
            ),
        };
        let g = Gauge::default()
            .ratio(ratio)
            .label(label)
            .use_unicode(true)
            .gauge_style(if sel {
                style.add_modifier(Modifier::REVERSED)
            } else {
                style
            });
        f.render_widget(g, r);
    }
}

fn log(f: &mut Frame, app: &App, area: Rect) {
    let h = area.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = app
        .log
        .iter()
        .rev()
        .take(h)
        .rev()
        .map(|l| Line::from(escape(l).into_owned()))
        .collect();
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::default().borders(Borders::ALL).title(" Log "))
            .wrap(Wrap { trim: false }),
        area,
    );
}

fn footer(f: &mut Frame, app: &App, area: Rect) {
    let text = if app.filtering {
        "type to filter · Enter keep · Esc clear".to_string()
    } else {
        app.keys
            .help()
            .iter()
            .map(|(k, d)| format!("{k} {d}"))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    f.render_widget(
        Paragraph::new(text).style(Style::default().add_modifier(Modifier::DIM)),
        area,
    );
}

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

fn dialog(f: &mut Frame, app: &App, theme: &Theme, d: &Dialog, area: Rect) {
    let (title, lines, w, h): (String, Vec<Line>, u16, u16) = match d {
        Dialog::Confirm { title, lines, .. } => {
            let mut l: Vec<Line> = lines.iter().map(|s| Line::from(s.as_str())).collect();
            l.push(Line::from(""));
            l.push(Line::styled(
                "Enter/y run · Esc/n cancel",
                theme.fg(Color::Cyan),
            ));
            (title.clone(), l, 72, lines.len() as u16 + 4)
        }
        Dialog::Prompt { title, input, .. } => (
            title.clone(),
            vec![
                Line::from(format!("> {input}_")),
                Line::from(""),
                Line::styled("Enter accept · Esc cancel", theme.fg(Color::Cyan)),
            ],
            72,
            5,
        ),
        Dialog::ChooseRemote { choice, .. } => {
            let names: Vec<&str> = app
                .remotes
                .iter()
                .filter(|r| matches!(r.state, RemoteState::Ok { .. }))
                .map(|r| r.name.as_str())
                .collect();
            let l: Vec<Line> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    if i == *choice {
                        Line::styled(format!("> {n}"), theme.selected())
                    } else {
                        Line::from(format!("  {n}"))
                    }
                })
                .collect();
            (
                "Push to which remote?".into(),
                l,
                40,
                names.len() as u16 + 2,
            )
        }
        Dialog::Message { title, lines } => {
            let mut l: Vec<Line> = lines.iter().map(|s| Line::from(s.as_str())).collect();
            l.push(Line::styled("Esc close", theme.fg(Color::Cyan)));
            (title.clone(), l, 76, lines.len() as u16 + 4)
        }
        Dialog::Help => {
            let help = app.keys.help();
            let mut l: Vec<Line> = help
                .iter()
                .map(|(k, d)| Line::from(format!("{k:<10} {d}")))
                .collect();
            l.push(Line::from(""));
            l.push(Line::from(
                "Rebind keys in keys.toml in the config directory.",
            ));
            let h = l.len() as u16 + 2;
            ("Keys".into(), l, 56, h)
        }
        Dialog::QuitWhileRunning => (
            "Quit?".into(),
            vec![
                Line::from(format!(
                    "{} job(s) still running; quitting cancels them.",
                    app.running_jobs()
                )),
                Line::from("y quit · Esc stay"),
            ],
            60,
            4,
        ),
        Dialog::Compare {
            title,
            cells,
            summary,
        } => {
            let width = 64usize;
            let mut l: Vec<Line> = summary.iter().map(|s| Line::from(s.as_str())).collect();
            l.push(Line::from(vec![
                Span::styled("█ same ", theme.fg(Color::Green)),
                Span::styled("█ changed ", theme.fg(Color::Red)),
                Span::styled("░ zero ", theme.fg(Color::DarkGray)),
                Span::styled("▒ missing", theme.fg(Color::Yellow)),
            ]));
            for row in cells.chunks(width) {
                let spans: Vec<Span> = row
                    .iter()
                    .map(|c| match c {
                        Cell::Same => Span::styled("█", theme.fg(Color::Green)),
                        Cell::Changed => {
                            Span::styled(if theme.color { "█" } else { "X" }, theme.fg(Color::Red))
                        }
                        Cell::Zero => Span::styled("░", theme.fg(Color::DarkGray)),
                        Cell::Missing => Span::styled("▒", theme.fg(Color::Yellow)),
                    })
                    .collect();
                l.push(Line::from(spans));
            }
            let h = l.len() as u16 + 2;
            (title.clone(), l, width as u16 + 4, h)
        }
    };
    let r = centered(area, w, h.max(3));
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {title} "))
                .border_style(theme.fg(Color::Cyan)),
        ),
        r,
    );
}
