//! The console without a terminal: `update` (actions in, state and effects
//! out) and whole screens through ratatui's TestBackend with a fixed clock.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use lifeboat_core::format::manifest::{
    ImageFormat, Labels, Manifest, Role, SourceInfo, Stats, VmInfo, VolumeInfo,
};
use lifeboat_core::format::{Id, ManifestKey};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::app::{Action, App, Dialog, Effect, Pane, Presence, Rpo};
use super::view::{render, Theme};

fn now() -> DateTime<Utc> {
    "2026-11-25T12:00:00Z".parse().unwrap()
}

fn backup(vm: &str, vol: &str, hours_ago: i64, seed: u8) -> (ManifestKey, Manifest) {
    let m = Manifest {
        format: 1,
        vm: VmInfo { name: vm.into() },
        volume: VolumeInfo {
            name: vol.into(),
            role: if vol == "root" {
                Role::Root
            } else {
                Role::Data
            },
            format: ImageFormat::Qcow2,
            virtual_size: 20 << 30,
        },
        created_at: now() - Duration::hours(hours_ago),
        chunk_size: 4 << 20,
        index: Id::of(&[seed, 1]),
        parent: None,
        set: format!("set{seed:02}"),
        source: SourceInfo {
            host: "hv1".into(),
            path: format!("/vm/{vm}-{vol}.qcow2"),
        },
        stats: Stats {
            logical_bytes: 20 << 30,
            nonzero_bytes: (3 << 30) + seed as u64 * (1 << 20),
            new_chunks: seed as u64,
            new_stored_bytes: seed as u64 * (3 << 20),
        },
        labels: Labels {
            note: seed.is_multiple_of(3).then(|| "nightly".into()),
            ..Default::default()
        },
        definition: None,
        capture: None,
    };
    (m.key(), m)
}

fn app() -> App {
    let mut a = App::new(
        "/srv/lifeboat".into(),
        vec![
            ("web01".into(), vec!["root".into(), "data".into()]),
            ("new01".into(), vec!["root".into()]),
        ],
        vec![("offsite".into(), "http://10.0.0.9:8473/".into())],
        now(),
    );
    let mut b = Vec::new();
    for i in 0..6u8 {
        b.push(backup("web01", "root", 2 + 24 * i as i64, i + 1));
        b.push(backup("web01", "data", 2 + 24 * i as i64, i + 20));
    }
    b.push(backup("db01", "root", 24 * 5, 40));
    a.update(Action::Loaded(shared(b)));
    let held: BTreeSet<Id> = a
        .backups
        .iter()
        .filter(|(_, m)| m.created_at < now() - Duration::hours(48))
        .map(|(k, _)| k.id)
        .collect();
    a.update(Action::RemoteListed {
        name: "offsite".into(),
        result: Ok((12.0, held)),
    });
    a
}

/// Backups as the runner hands them over.
fn shared(b: Vec<(ManifestKey, Manifest)>) -> super::app::Backups {
    std::sync::Arc::new(
        b.into_iter()
            .map(|(k, m)| (k, std::sync::Arc::new(m)))
            .collect(),
    )
}

fn key(c: KeyCode) -> Action {
    Action::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn screen(a: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render(f, a, &Theme { color: false })).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[test]
fn tree_rpo_and_navigation() {
    let mut a = app();
    let rows = a.tree();
    assert_eq!(rows[0].vm, "db01");
    assert_eq!(a.rpo("web01"), Rpo::Ok);
    assert_eq!(a.rpo("db01"), Rpo::Stale);
    assert_eq!(a.rpo("new01"), Rpo::NeverBackedUp);
    // Down to web01, Enter opens its timeline.
    for _ in 0..4 {
        a.update(key(KeyCode::Char('j')));
    }
    assert_eq!(a.selected_row().unwrap().vm, "web01");
    a.update(key(KeyCode::Enter));
    assert_eq!(a.focus, Pane::Timeline);
    assert_eq!(a.timeline().len(), 12);
    a.update(key(KeyCode::Down));
    assert_eq!(a.browser.timeline_sel, 1);
    // Moving past the end clamps.
    for _ in 0..50 {
        a.update(key(KeyCode::Down));
    }
    assert_eq!(a.browser.timeline_sel, 11);
    // Presence: the newest is missing on the remote, the oldest is held.
    let newest = a.timeline()[0].0.clone();
    let oldest = a.timeline()[11].0.clone();
    assert_eq!(a.presence(&newest), vec![Presence::Missing]);
    assert_eq!(a.presence(&oldest), vec![Presence::Held]);
}

#[test]
fn push_is_planned_confirmed_then_run() {
    let mut a = app();
    for _ in 0..4 {
        a.update(key(KeyCode::Down));
    }
    a.update(key(KeyCode::Enter));
    // p asks the core for a plan; nothing is sent yet.
    let effects = a.update(key(KeyCode::Char('p')));
    assert!(
        matches!(&effects[..], [Effect::PlanTransfer { push: true, remote, .. }] if remote == "offsite"),
        "{effects:?}"
    );
    assert!(a.dialog.is_none());
    // The plan comes back with what the remote lacks; it is shown for a yes.
    a.update(Action::Planned {
        plan: 7,
        title: "Push db01/root to offsite".into(),
        lines: vec!["3 of 9 chunks to send (12.0 MiB of data; 6 already there)".into()],
        noop: false,
    });
    let Some(Dialog::Confirm { lines, .. }) = &a.dialog else {
        panic!("no confirm dialog: {:?}", a.dialog)
    };
    assert!(lines[0].contains("3 of 9 chunks"));
    // A stray key keeps the dialog; Esc declines and forgets the plan.
    assert!(a.update(key(KeyCode::Char('z'))).is_empty());
    assert!(a.dialog.is_some());
    assert_eq!(a.update(key(KeyCode::Esc)), vec![Effect::DropPlan(7)]);
    assert!(a.dialog.is_none());
    // A new plan, confirmed, runs.
    a.update(Action::Planned {
        plan: 8,
        title: "Push".into(),
        lines: vec![],
        noop: false,
    });
    assert_eq!(a.update(key(KeyCode::Enter)), vec![Effect::RunPlan(8)]);
}

/// W restores the selected backup's whole VM set into a directory; Tab
/// in its prompt toggles `virsh define`.
#[test]
fn vm_restore_prompt_names_the_set_and_toggles_define() {
    let mut a = app();
    for _ in 0..4 {
        a.update(key(KeyCode::Down));
    }
    a.update(key(KeyCode::Enter));
    a.update(key(KeyCode::Char('W')));
    let Some(Dialog::Prompt { title, .. }) = &a.dialog else {
        panic!("no prompt: {:?}", a.dialog)
    };
    assert!(title.starts_with("Restore the VM "), "{title}");
    a.update(key(KeyCode::Tab));
    for _ in 0..80 {
        a.update(key(KeyCode::Backspace));
    }
    for c in "/srv/vm".chars() {
        a.update(key(KeyCode::Char(c)));
    }
    let e = a.update(key(KeyCode::Enter));
    let [Effect::PlanRestoreVm {
        reference,
        dir,
        define,
        from: None,
        ..
    }] = &e[..]
    else {
        panic!("{e:?}")
    };
    assert_eq!(dir, "/srv/vm");
    assert!(*define, "Tab turned virsh define on");
    let (picked, _) = a.selected_backup().unwrap();
    assert!(
        reference.starts_with(&format!("{}@", picked.vm)),
        "a set reference: {reference}"
    );
    // Tab twice: off again.
    a.update(key(KeyCode::Char('W')));
    a.update(key(KeyCode::Tab));
    a.update(key(KeyCode::Tab));
    let e = a.update(key(KeyCode::Enter));
    assert!(
        matches!(&e[..], [Effect::PlanRestoreVm { define: false, .. }]),
        "{e:?}"
    );
}

#[test]
fn restore_prompt_asks_for_a_plan_and_shows_why_not() {
    let mut a = app();
    for _ in 0..4 {
        a.update(key(KeyCode::Down));
    }
    a.update(key(KeyCode::Enter));
    a.update(key(KeyCode::Char('r')));
    let Some(Dialog::Prompt { .. }) = &a.dialog else {
        panic!("no prompt")
    };
    for _ in 0..80 {
        a.update(key(KeyCode::Backspace));
    }
    // An empty path keeps the prompt open.
    assert!(a.update(key(KeyCode::Enter)).is_empty());
    assert!(matches!(a.dialog, Some(Dialog::Prompt { .. })));
    for c in "/no/such/dir/x.raw".chars() {
        a.update(key(KeyCode::Char(c)));
    }
    // update does no I/O: the path goes to the core's restore plan.
    let e = a.update(key(KeyCode::Enter));
    assert!(
        matches!(&e[..], [Effect::PlanRestore { to, from: None, .. }] if to == "/no/such/dir/x.raw"),
        "{e:?}"
    );
    // The plan's refusal is shown as it came.
    a.update(Action::PlanFailed {
        title: "Cannot restore there".into(),
        error: "cannot restore to /no/such/dir/x.raw: directory /no/such/dir does not exist".into(),
    });
    let Some(Dialog::Message { lines, .. }) = &a.dialog else {
        panic!("expected an error message, got {:?}", a.dialog)
    };
    assert!(lines[0].contains("does not exist"));
}

#[test]
fn compare_marks_two_backups_and_quit_asks_while_jobs_run() {
    let mut a = app();
    for _ in 0..4 {
        a.update(key(KeyCode::Down));
    }
    a.update(key(KeyCode::Enter));
    assert!(a.update(key(KeyCode::Char('c'))).is_empty());
    assert!(a.status.as_ref().is_some_and(|s| s.text.contains("marked")));
    // The next row is the data volume at the same time: a different
    // volume is compared only after a warning.
    a.update(key(KeyCode::Down));
    assert!(a.update(key(KeyCode::Char('c'))).is_empty());
    assert!(
        matches!(&a.dialog, Some(Dialog::Confirm { title, .. }) if title.contains("different volumes")),
        "{:?}",
        a.dialog
    );
    let e = a.update(key(KeyCode::Enter));
    assert!(matches!(&e[..], [Effect::Compare { .. }]));
    // The same volume compares at once.
    a.update(key(KeyCode::Char('c')));
    a.update(key(KeyCode::Down));
    a.update(key(KeyCode::Down));
    let e = a.update(key(KeyCode::Char('c')));
    assert!(
        matches!(&e[..], [Effect::Compare { a, b }] if a.volume == b.volume),
        "{e:?}"
    );
    a.update(Action::JobStarted {
        id: 7,
        title: "push".into(),
        kind: lifeboat_core::jobs::JobKind::Other,
    });
    assert!(a.update(key(KeyCode::Char('q'))).is_empty());
    assert_eq!(a.dialog, Some(Dialog::QuitWhileRunning));
    assert_eq!(a.update(key(KeyCode::Char('y'))), vec![Effect::Quit]);
}

#[test]
fn failed_job_shows_a_message_and_keeps_its_result() {
    let mut a = app();
    a.update(Action::JobStarted {
        id: 3,
        title: "push web01/root".into(),
        kind: lifeboat_core::jobs::JobKind::Other,
    });
    let e = a.update(Action::JobDone {
        id: 3,
        result: Err("remote offsite: timed out".into()),
        cancelled: false,
    });
    assert!(e.contains(&Effect::Reload));
    assert!(
        matches!(&a.dialog, Some(Dialog::Message { lines, .. }) if lines[0].contains("timed out"))
    );
    assert!(a.log.lines.iter().any(|l| l.contains("FAILED")));
}

#[test]
fn screens_at_80x24_and_160x48() {
    let mut a = app();
    for _ in 0..4 {
        a.update(key(KeyCode::Down));
    }
    a.update(Action::JobStarted {
        id: 1,
        title: "push web01/root → offsite".into(),
        kind: lifeboat_core::jobs::JobKind::Other,
    });
    a.update(Action::JobDone {
        id: 1,
        result: Ok("3 chunks, 9.0 MiB sent".into()),
        cancelled: false,
    });
    a.dialog = None;
    insta::assert_snapshot!("console_80x24", screen(&a, 80, 24));
    insta::assert_snapshot!("console_160x48", screen(&a, 160, 48));
    a.update(key(KeyCode::Char('?')));
    insta::assert_snapshot!("help_80x24", screen(&a, 80, 24));
}

#[test]
fn tiny_terminal_gets_a_message_not_a_crash() {
    let a = app();
    let s = screen(&a, 20, 10);
    assert!(s.contains("needs at least"), "{s}");
}

#[test]
fn browsing_a_remote_and_pulling_from_it() {
    let mut a = app();
    // Only the remote holds ghost01: the disaster case.
    let remote = vec![
        backup("ghost01", "root", 30, 50),
        backup("web01", "root", 2 + 24 * 5, 6),
    ];
    let e = a.update(key(KeyCode::Char('s')));
    assert_eq!(e, vec![Effect::Browse("offsite".into())]);
    assert_eq!(a.source.as_deref(), Some("offsite"));
    a.update(Action::RemoteBrowsed {
        name: "offsite".into(),
        result: Ok(shared(remote)),
    });
    assert_eq!(a.tree()[0].vm, "ghost01");
    assert_eq!(a.presence_columns(), vec!["local".to_string()]);
    let k = a.timeline()[0].0.clone();
    assert_eq!(
        a.presence(&k),
        vec![Presence::Missing],
        "ghost01 is not local"
    );
    a.update(key(KeyCode::Enter));
    let e = a.update(key(KeyCode::Char('p')));
    assert!(
        matches!(&e[..], [Effect::PlanTransfer { push: false, remote, .. }] if remote == "offsite"),
        "{e:?}"
    );
    // Restore from the remote names it as the source.
    a.update(key(KeyCode::Char('r')));
    for _ in 0..80 {
        a.update(key(KeyCode::Backspace));
    }
    for c in "/tmp/lifeboat-test-ghost.raw".chars() {
        a.update(key(KeyCode::Char(c)));
    }
    let e = a.update(key(KeyCode::Enter));
    assert!(
        matches!(&e[..], [Effect::PlanRestore { from: Some(r), .. }] if r == "offsite"),
        "{e:?}"
    );
    // Back to local.
    assert!(a.update(key(KeyCode::Char('s'))).is_empty());
    assert_eq!(a.source, None);
    assert_eq!(a.tree()[0].vm, "db01");
}

#[test]
fn compare_with_live_volume_and_remote_copy() {
    let mut a = app();
    // web01/root is in the inventory: compare with the live volume.
    for _ in 0..6 {
        a.update(key(KeyCode::Down));
    }
    assert_eq!(a.selected_row().unwrap().volume.as_deref(), Some("root"));
    a.update(key(KeyCode::Enter));
    let e = a.update(key(KeyCode::Char('C')));
    assert!(
        matches!(&e[..], [Effect::CompareLive { key }] if key.vm == "web01"),
        "{e:?} dialog={:?} focus={:?} sel={:?}",
        a.dialog,
        a.focus,
        a.selected_backup().map(|b| b.0)
    );
    // db01 is not: a message, no effect.
    a.focus = Pane::Tree;
    a.browser.tree_sel = 0;
    a.rebuild();
    a.update(key(KeyCode::Enter));
    assert!(a.update(key(KeyCode::Char('C'))).is_empty());
    assert!(matches!(&a.dialog, Some(Dialog::Message { title, .. }) if title == "No live volume"));
    a.update(key(KeyCode::Esc));
    // In a remote view, c compares its copy with the local repository.
    a.update(key(KeyCode::Char('s')));
    a.update(Action::RemoteBrowsed {
        name: "offsite".into(),
        result: Ok(shared(vec![backup("web01", "root", 200, 9)])),
    });
    // The inventory's VMs show in a remote's view too (new01: never sent).
    assert_eq!(a.tree()[0].vm, "new01");
    assert_eq!(a.rpo("new01"), Rpo::NeverBackedUp);
    a.focus = Pane::Tree;
    while a.selected_row().is_some_and(|r| r.vm != "web01") {
        a.update(key(KeyCode::Down));
    }
    a.update(key(KeyCode::Enter));
    let e = a.update(key(KeyCode::Char('c')));
    assert!(
        matches!(&e[..], [Effect::CompareRemote { remote, .. }] if remote == "offsite"),
        "{e:?} source={:?} dialog={:?} sel={:?} tree={:?}",
        a.source,
        a.dialog,
        a.selected_backup().map(|b| b.0),
        a.tree()
    );
}

/// Text from a repository (a note, a source path) or a peer (an error in
/// the Log pane) is escaped before it reaches the terminal.
#[test]
fn hostile_text_is_escaped_on_screen() {
    let mut a = app();
    let mut b: Vec<(ManifestKey, Manifest)> = a
        .backups
        .iter()
        .map(|(k, m)| (k.clone(), Manifest::clone(m)))
        .collect();
    let (k, mut m) = backup("evil", "root", 1, 99);
    m.labels.note = Some("x\x1b]0;pwned\x07\u{202e}y".into());
    m.source.path = "/img\x1b[2J.raw".into();
    b.push((k, m));
    a.update(Action::Loaded(shared(b)));
    a.update(Action::Log("remote said \x1b[31mred\x1b[0m".into()));
    // Select the evil VM's volume and its backup.
    while a.selected_row().is_some_and(|r| r.vm != "evil") {
        a.update(key(KeyCode::Down));
    }
    a.update(key(KeyCode::Enter));
    let s = screen(&a, 160, 48);
    assert!(
        !s.contains('\u{202e}'),
        "a raw bidi override reached the screen:\n{s}"
    );
    assert!(
        s.contains("x\\x1b]0;pwned\\x07"),
        "note not shown escaped:\n{s}"
    );
    assert!(
        s.contains("/img\\x1b[2J.raw"),
        "source not shown escaped:\n{s}"
    );
    assert!(
        s.contains("remote said \\x1b[31mred"),
        "log not escaped:\n{s}"
    );
}

fn chord(c: char, m: KeyModifiers) -> Action {
    Action::Key(KeyEvent::new(KeyCode::Char(c), m))
}

fn web01_timeline(a: &mut App) {
    while a.selected_row().is_some_and(|r| r.vm != "web01") {
        a.update(key(KeyCode::Down));
    }
    a.update(key(KeyCode::Enter));
}

#[test]
fn modifiers_are_matched_exactly() {
    let mut a = app();
    web01_timeline(&mut a);
    for (c, m) in [
        ('v', KeyModifiers::CONTROL),
        ('b', KeyModifiers::CONTROL),
        ('p', KeyModifiers::ALT),
        ('r', KeyModifiers::ALT),
        ('q', KeyModifiers::CONTROL),
    ] {
        assert!(a.update(chord(c, m)).is_empty(), "{c} with {m:?}");
        assert!(a.dialog.is_none(), "{c} with {m:?} opened {:?}", a.dialog);
        assert!(!a.quit);
    }
    // Shift is part of a capital letter: V is deep verify.
    a.update(chord('V', KeyModifiers::SHIFT));
    assert!(matches!(&a.dialog, Some(Dialog::Confirm { title, .. }) if title == "Deep verify"));
    a.update(key(KeyCode::Esc));
    assert_eq!(
        a.update(chord('c', KeyModifiers::CONTROL)),
        vec![Effect::Quit]
    );
}

#[test]
fn restore_prompt_edits_like_a_shell_line() {
    let mut a = app();
    web01_timeline(&mut a);
    a.update(key(KeyCode::Char('r')));
    let value = |a: &App| match &a.dialog {
        Some(Dialog::Prompt { input, .. }) => input.value().to_string(),
        other => panic!("no prompt: {other:?}"),
    };
    assert_eq!(value(&a), "./web01-root.qcow2");
    // Ctrl-W deletes the last word, Ctrl-U the whole line.
    a.update(chord('w', KeyModifiers::CONTROL));
    assert_eq!(value(&a), "./web01-");
    a.update(chord('u', KeyModifiers::CONTROL));
    assert_eq!(value(&a), "");
    for c in "/srv/x.raw".chars() {
        a.update(key(KeyCode::Char(c)));
    }
    // Home, then typing inserts at the start; Left moves back a character.
    a.update(key(KeyCode::Home));
    a.update(key(KeyCode::Char('.')));
    assert_eq!(value(&a), "./srv/x.raw");
    a.update(key(KeyCode::End));
    a.update(key(KeyCode::Left));
    a.update(key(KeyCode::Left));
    a.update(key(KeyCode::Left));
    a.update(key(KeyCode::Char('w')));
    assert_eq!(value(&a), "./srv/x.wraw");
    // Ctrl-A / Ctrl-E move too; no letter is inserted by a chord.
    a.update(chord('a', KeyModifiers::CONTROL));
    a.update(chord('e', KeyModifiers::CONTROL));
    assert_eq!(value(&a), "./srv/x.wraw");
}

fn compare_screen(cells: Vec<super::app::Cell>, w: u16, h: u16) -> String {
    let mut a = app();
    a.update(Action::CompareReady {
        title: "Compare".into(),
        cells,
        summary: vec![
            "A db01/root 0123456789ab (2026-11-25 10:00)".into(),
            "B db01/data 0123456789ab (2026-11-25 10:00)".into(),
            "same 0 B · changed 128.0 MiB · added 64.0 MiB · removed 0 B · 1 cell = 1 chunk(s)"
                .into(),
        ],
        held: false,
    });
    screen(&a, w, h)
}

#[test]
fn compare_map_is_never_cut_and_legend_matches_glyphs() {
    use super::app::Cell;
    // 256 chunks: 128 changed, 64 same, 64 only in B (added).
    let mut cells = vec![Cell::Changed; 128];
    cells.extend(vec![Cell::Same; 64]);
    cells.extend(vec![Cell::Added; 64]);
    for (w, h) in [(80, 24), (100, 30), (160, 48)] {
        let s = compare_screen(cells.clone(), w, h);
        assert!(s.contains("Esc close"), "{w}x{h}: last line cut:\n{s}");
        // Every cell is drawn (or merged, and then said so).
        let (x, plus) = (s.matches('X').count(), s.matches('+').count());
        if s.contains("1 glyph =") {
            assert!(plus >= 1 && x >= 1, "{w}x{h}:\n{s}");
        } else {
            assert_eq!((x - 1, plus - 1), (128, 64), "{w}x{h}:\n{s}");
        }
        // The legend names the glyphs the map draws (also without colour).
        assert!(s.contains("X changed") && s.contains("+ added"), "{s}");
    }
    insta::assert_snapshot!("compare_80x24", compare_screen(cells, 80, 24));
}

#[test]
fn log_and_jobs_follow_new_entries() {
    let mut a = app();
    for i in 0..60 {
        a.update(Action::Log(format!(
            "line {i} with enough words to wrap in a narrow log pane at a hundred columns"
        )));
    }
    let s = screen(&a, 100, 30);
    assert!(
        s.contains("line 59"),
        "the newest log line is not shown:\n{s}"
    );
    for id in 1..=6 {
        a.update(Action::JobStarted {
            id,
            title: format!("job number {id}"),
            kind: lifeboat_core::jobs::JobKind::Other,
        });
    }
    let s = screen(&a, 80, 24);
    assert!(
        s.contains("#6"),
        "the newest job is not shown at 80x24:\n{s}"
    );
    // Scrolling the Log back holds it; End follows again.
    a.focus = Pane::Log;
    a.lower = super::app::Lower::Log;
    a.update(key(KeyCode::Up));
    a.update(key(KeyCode::Up));
    let s = screen(&a, 80, 24);
    assert!(s.contains("back 2") && !s.contains("job 6 started"), "{s}");
    a.update(key(KeyCode::End));
    assert!(screen(&a, 80, 24).contains("job 6 started"));
}

fn running_job(a: &mut App) {
    a.update(Action::JobStarted {
        id: 4,
        title: "restore web01 set from offsite".into(),
        kind: lifeboat_core::jobs::JobKind::Other,
    });
    a.update(Action::JobProgress {
        id: 4,
        snapshot: lifeboat_core::jobs::Snapshot {
            phase: "restoring".into(),
            bytes_done: 100 << 20,
            bytes_total: 1 << 30,
            objects_done: 25,
            objects_total: 256,
            job_bytes_done: 617 << 20,
            job_bytes_total: 3 << 30,
            elapsed_secs: 12.0,
            bytes_per_sec: 120.0 * (1 << 20) as f64,
            eta_secs: Some(20.5),
        },
        output: Vec::new(),
        parts: Vec::new(),
    });
}

#[test]
fn plans_dialog_drills_a_plan_with_a_panel_per_vm() {
    use super::app::plans::PlanRow;
    let mut a = app();
    // No plans: S says how to make one.
    a.update(key(KeyCode::Char('S')));
    assert!(screen(&a, 100, 30).contains("add a [plan.NAME] table"));
    a.update(key(KeyCode::Esc));
    a.update(Action::Plans(vec![PlanRow {
        name: "shop".into(),
        source: "offsite".into(),
        network: "shop-net".into(),
        members: vec![
            ("db01".into(), Some("10.10.0.2".into()), vec![]),
            (
                "web01".into(),
                Some("10.10.0.3".into()),
                vec!["db01".into()],
            ),
        ],
        checks: vec!["web01 http :8080/cgi-bin/order".into()],
        rpo: Ok((3 * 86_400, 7_200)),
        last: None,
    }]));
    a.update(key(KeyCode::Char('S')));
    let s = screen(&a, 100, 30);
    assert!(
        s.contains("Recovery plans") && s.contains("> shop  network shop-net  from offsite"),
        "{s}"
    );
    assert!(s.contains("10.10.0.3") && s.contains("after db01"), "{s}");
    assert!(
        s.contains("service RPO 3d 0h here (spread 2h 0m)") && s.contains("never drilled"),
        "{s}"
    );
    let fx = a.update(key(KeyCode::Char('D')));
    assert_eq!(
        fx,
        vec![Effect::PlanDrill {
            plan: "shop".into()
        }]
    );
    a.update(Action::JobStarted {
        id: 11,
        title: "drill plan shop from offsite".into(),
        kind: lifeboat_core::jobs::JobKind::PlanDrill,
    });
    let snap = |phase: &str, secs: f64| lifeboat_core::jobs::Snapshot {
        phase: phase.into(),
        bytes_done: 0,
        bytes_total: 0,
        objects_done: 0,
        objects_total: 0,
        job_bytes_done: 0,
        job_bytes_total: 0,
        elapsed_secs: secs,
        bytes_per_sec: 0.0,
        eta_secs: None,
    };
    a.update(Action::JobProgress {
        id: 11,
        snapshot: snap(
            "plan: fetching, restoring and booting 2 VMs (RPO 3d 3h)",
            5.0,
        ),
        output: Vec::new(),
        parts: vec![
            super::app::Part {
                name: "db01".into(),
                snapshot: snap("up: serving the plan's other VMs", 4.0),
                output: vec![
                    "db01: database open (orders: 1042)".into(),
                    "db01 login:".into(),
                ],
            },
            super::app::Part {
                name: "web01".into(),
                snapshot: snap("wait: for db01 to pass its checks", 4.0),
                output: vec!["\x1b[2Jweb01 \x07".into()],
            },
        ],
    });
    let s = screen(&a, 120, 40);
    assert!(
        s.contains("── db01 · up: serving the plan's other VMs · "),
        "{s}"
    );
    assert!(s.contains("  db01 login:"), "{s}");
    assert!(
        s.contains("── web01 · wait: for db01 to pass its checks"),
        "{s}"
    );
    assert!(!s.contains('\x1b') && !s.contains('\x07'), "{s}");
}

#[test]
fn job_progress_shows_job_totals_rate_and_eta_at_every_width() {
    let mut a = app();
    running_job(&mut a);
    for (w, h) in [(80, 24), (100, 30), (160, 48)] {
        let s = screen(&a, w, h);
        let line = s.lines().find(|l| l.contains("#4")).unwrap_or_default();
        assert!(
            line.contains("617.0 MiB/3.0 GiB")
                && line.contains("120.0 MiB/s")
                && line.contains("ETA 0:21"),
            "{w}x{h}: {line}"
        );
        if w >= 160 {
            // 617 MiB of 3 GiB is 20 %: two of ten bar cells.
            assert!(line.contains("▕██░░░░░░░░▏"), "{w}x{h}: {line}");
        }
    }
}

#[test]
fn hints_follow_the_key_map() {
    let mut a = app();
    a.keys = super::keymap::KeyMap::with_overrides("restore = \"e\"\nquit = \"r\"\n").unwrap();
    let s = screen(&a, 80, 24);
    assert!(s.contains("e restore"), "{s}");
    assert!(s.contains("r quit") && !s.contains("r restore"), "{s}");
    web01_timeline(&mut a);
    assert!(screen(&a, 100, 30).contains("e restore"));
    a.update(key(KeyCode::Char('e')));
    assert!(matches!(a.dialog, Some(Dialog::Prompt { .. })));
    a.update(key(KeyCode::Esc));
    a.update(key(KeyCode::Char('r')));
    assert!(a.quit, "r is rebound to quit");
}

#[test]
fn refresh_runs_on_an_interval_and_after_a_remote_changes() {
    let mut a = app();
    a.update(Action::Loaded(a.backups.clone()));
    assert_eq!(a.refreshed_ago(), Some(0));
    assert!(a
        .update(Action::Tick(now() + Duration::seconds(10)))
        .is_empty());
    let s = screen(&a, 100, 30);
    assert!(s.contains("refreshed 10s ago"), "{s}");
    let e = a.update(Action::Tick(now() + Duration::seconds(31)));
    assert!(e.contains(&Effect::Reload) && e.contains(&Effect::ListRemote("offsite".into())));
    // In a remote view, a changed list is browsed again, and the header
    // and the title agree on the count.
    a.update(key(KeyCode::Char('s')));
    a.update(Action::RemoteBrowsed {
        name: "offsite".into(),
        result: Ok(shared(vec![backup("web01", "root", 30, 9)])),
    });
    let more: BTreeSet<Id> = [
        backup("web01", "root", 30, 9),
        backup("web01", "root", 1, 10),
    ]
    .iter()
    .map(|(k, _)| k.id)
    .collect();
    let e = a.update(Action::RemoteListed {
        name: "offsite".into(),
        result: Ok((3.0, more)),
    });
    assert_eq!(e, vec![Effect::Browse("offsite".into())]);
    a.update(Action::RemoteBrowsed {
        name: "offsite".into(),
        result: Ok(shared(vec![
            backup("web01", "root", 30, 9),
            backup("web01", "root", 1, 10),
        ])),
    });
    let s = screen(&a, 160, 48);
    assert!(
        s.contains("VIEWING REMOTE offsite: 2 backups") && s.contains("offsite up 3ms 2 backups"),
        "{s}"
    );
}

#[test]
fn a_dead_remote_says_why_everywhere() {
    let mut a = app();
    a.update(Action::RemoteListed {
        name: "offsite".into(),
        result: Err("connection refused (is lifeboat serve running at 10.0.0.9:8473?)".into()),
    });
    web01_timeline(&mut a);
    let s = screen(&a, 80, 24);
    assert!(s.contains("offsite ✗"), "{s}");
    assert!(s.contains("connection refused"), "status line:\n{s}");
    assert!(s.contains("✗ n/a"), "presence:\n{s}");
    let s = screen(&a, 160, 48);
    assert!(s.contains("UNREACHABLE: connection refused"), "{s}");
}

#[test]
fn a_plan_with_nothing_to_do_is_shown_not_offered() {
    let mut a = app();
    let e = a.update(Action::Planned {
        plan: 5,
        title: "Push web01/root 88ca53f7a98f to offsite".into(),
        lines: vec![
            "the destination already holds all 1 selected backup(s): nothing to send".into(),
        ],
        noop: true,
    });
    assert_eq!(e, vec![Effect::DropPlan(5)]);
    assert!(
        matches!(&a.dialog, Some(Dialog::Message { title, .. }) if title.ends_with("nothing to do"))
    );
    // Enter closes it; nothing runs.
    assert!(a.update(key(KeyCode::Enter)).is_empty());
}

#[test]
fn a_vm_is_as_fresh_as_its_stalest_volume() {
    let mut a = App::new(
        "/srv/lifeboat".into(),
        vec![(
            "db02".into(),
            vec!["root".into(), "data".into(), "logs".into()],
        )],
        vec![],
        now(),
    );
    a.update(Action::Loaded(shared(vec![
        backup("db02", "root", 24 * 4, 1),
        backup("db02", "data", 1, 2),
    ])));
    assert_eq!(a.rpo_volume("db02", "data"), Rpo::Ok);
    assert_eq!(a.rpo_volume("db02", "root"), Rpo::Stale);
    assert_eq!(a.rpo_volume("db02", "logs"), Rpo::NeverBackedUp);
    assert_eq!(a.rpo("db02"), Rpo::NeverBackedUp);
    a.inventory = vec![("db02".into(), vec!["root".into(), "data".into()])];
    a.rebuild();
    assert_eq!(a.rpo("db02"), Rpo::Stale);
}

#[test]
fn small_screens_reach_details_log_and_zoom() {
    let mut a = app();
    web01_timeline(&mut a);
    a.update(Action::Log("a log line to find".into()));
    a.update(key(KeyCode::Char('o')));
    let s = screen(&a, 80, 24);
    assert!(s.contains("a log line to find"), "{s}");
    a.update(key(KeyCode::Char('o')));
    let s = screen(&a, 80, 24);
    assert!(
        s.contains("not verified yet") || s.contains("verify"),
        "{s}"
    );
    insta::assert_snapshot!("details_80x24", s);
    // Zoom: the timeline takes the screen.
    a.update(key(KeyCode::Char('z')));
    let s = screen(&a, 80, 24);
    assert!(!s.contains("VMs (local)"), "{s}");
    assert_eq!(s.matches("2026-11-").count(), 12, "{s}");
    a.update(key(KeyCode::Esc));
    assert!(!a.zoom);
}

#[test]
fn screens_at_100x30_and_too_small() {
    let mut a = app();
    web01_timeline(&mut a);
    running_job(&mut a);
    insta::assert_snapshot!("console_100x30", screen(&a, 100, 30));
    let s = screen(&a, 40, 12);
    assert!(s.contains("needs at least 60x16"), "{s}");
    assert!(!s.contains("miss"), "{s}");
}

#[test]
fn a_newcomer_sees_what_to_do() {
    let mut a = App::new(
        "/root/.local/share/lifeboat/repo".into(),
        vec![],
        vec![],
        now(),
    );
    a.config_path = Some("/root/.config/lifeboat/config.toml (not created yet)".into());
    a.update(Action::LoadFailed(
        "no repository at /root/.local/share/lifeboat/repo".into(),
    ));
    let s = screen(&a, 80, 24);
    for want in [
        "lifeboat init",
        "lifeboat demo",
        "config.toml",
        "no repository at",
    ] {
        assert!(s.contains(want), "{want}:\n{s}");
    }
    insta::assert_snapshot!("welcome_80x24", s);
}

#[test]
fn help_lists_every_key_and_scrolls_at_80x24() {
    let mut a = app();
    a.update(key(KeyCode::Char('?')));
    let s = screen(&a, 80, 24);
    assert!(s.contains("scroll"), "no scroll hint:\n{s}");
    for _ in 0..60 {
        a.update(key(KeyCode::Down));
    }
    let s = screen(&a, 80, 24);
    for want in ["q          quit", "STALE", "● held", "keys.toml"] {
        assert!(s.contains(want), "{want}:\n{s}");
    }
    let keys = super::keymap::KeyMap::default().help();
    for k in ["Shift-Tab", "PgUp PgDn", "Home End", "Esc"] {
        assert!(keys.iter().any(|(c, _)| c == k), "{k}");
    }
}

#[test]
fn jobs_open_their_log_cancel_asks_and_history_is_kept() {
    use lifeboat_core::repo::state::{JobOutcome, JobRecord};
    let mut a = app();
    a.update(Action::History(
        vec![JobRecord {
            title: "push db01 to offsite".into(),
            started_at: now() - Duration::hours(30),
            ended_at: now() - Duration::hours(30),
            outcome: JobOutcome::Failed,
            message: "remote offsite: timed out".into(),
            log: vec!["10:00:00 started".into()],
        }],
        1,
    ));
    running_job(&mut a);
    a.focus = Pane::Jobs;
    assert_eq!(a.jobs.sel, 1, "the running job is selected");
    a.update(key(KeyCode::Char('x')));
    assert!(matches!(
        &a.dialog,
        Some(Dialog::Confirm {
            effect: Effect::Cancel(4),
            ..
        })
    ));
    assert_eq!(a.update(key(KeyCode::Enter)), vec![Effect::Cancel(4)]);
    let e = a.update(Action::JobDone {
        id: 4,
        result: Err("cancelled".into()),
        cancelled: true,
    });
    assert!(e
        .iter()
        .any(|e| matches!(e, Effect::RecordJob(r) if r.outcome == JobOutcome::Cancelled)));
    a.update(key(KeyCode::Up));
    a.update(key(KeyCode::Enter));
    let Some(Dialog::Message { title, lines, .. }) = &a.dialog else {
        panic!("no job log: {:?}", a.dialog)
    };
    assert!(title.contains("earlier session"), "{title}");
    assert!(lines.iter().any(|l| l.contains("timed out")), "{lines:?}");
    assert!(a.log.lines.iter().any(|l| l.contains("damaged")));
}

#[test]
fn timeline_search_mouse_and_verify_state() {
    use lifeboat_core::repo::state::VerifyMark;
    let mut a = app();
    a.update(Action::Resize(100, 30));
    web01_timeline(&mut a);
    a.update(key(KeyCode::Char('/')));
    for c in "11-22".chars() {
        a.update(key(KeyCode::Char(c)));
    }
    a.update(key(KeyCode::Enter));
    let (_, m) = a.selected_backup().unwrap();
    assert_eq!(m.created_at.format("%m-%d").to_string(), "11-22");
    a.update(key(KeyCode::Char('n')));
    let (k, m) = a.selected_backup().unwrap();
    assert_eq!(m.created_at.format("%m-%d").to_string(), "11-22");
    assert_eq!(k.volume, "data");
    // Home / End.
    a.update(key(KeyCode::Home));
    assert_eq!(a.browser.timeline_sel, 0);
    a.update(key(KeyCode::End));
    assert_eq!(a.browser.timeline_sel, 11);
    // A click on the tree's first row selects db01.
    use crossterm::event::{MouseButton, MouseEvent, MouseEventKind};
    let click = |col, row| {
        Action::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: col,
            row,
            modifiers: KeyModifiers::NONE,
        })
    };
    a.update(click(3, 2));
    assert_eq!(a.focus, Pane::Tree);
    assert_eq!(a.selected_row().unwrap().vm, "db01");
    a.update(Action::Mouse(MouseEvent {
        kind: MouseEventKind::ScrollDown,
        column: 3,
        row: 4,
        modifiers: KeyModifiers::NONE,
    }));
    assert_eq!(a.browser.tree_sel, 3);
    // Verify results show per backup.
    web01_timeline(&mut a);
    let (k, _) = a.selected_backup().unwrap();
    a.update(Action::VerifyState(
        [(
            k.id,
            VerifyMark {
                at: now() - Duration::hours(1),
                deep: true,
                ok: true,
            },
        )]
        .into(),
    ));
    let s = screen(&a, 160, 48);
    assert!(s.contains("verify  ok (deep)"), "{s}");
}

#[test]
fn a_finished_plan_leaves_the_jobs_pane() {
    let mut a = app();
    a.update(Action::JobStarted {
        id: 1,
        title: "plan: push web01/root to offsite".into(),
        kind: lifeboat_core::jobs::JobKind::Plan,
    });
    let e = a.update(Action::JobDone {
        id: 1,
        result: Ok("planned; waiting for confirmation".into()),
        cancelled: false,
    });
    assert!(
        a.jobs.list.is_empty(),
        "{:?}",
        a.jobs.list.iter().map(|j| &j.title).collect::<Vec<_>>()
    );
    assert!(!e.iter().any(|e| matches!(e, Effect::RecordJob(_))));
    assert!(a.log.lines.iter().any(|l| l.contains("planned")));
    // A failed plan stays, with its error.
    a.update(Action::JobStarted {
        id: 2,
        title: "plan: restore web01/root".into(),
        kind: lifeboat_core::jobs::JobKind::Plan,
    });
    a.update(Action::JobDone {
        id: 2,
        result: Err("cannot restore to /proc/x".into()),
        cancelled: false,
    });
    assert_eq!(a.jobs.list.len(), 1);
    // What a job is comes with it, not from its title: a prune plan, a
    // drill whose title reads like a plan, a restore into a cloud.
    a.update(Action::JobStarted {
        id: 3,
        title: "prune plan web01".into(),
        kind: lifeboat_core::jobs::JobKind::Plan,
    });
    let e = a.update(Action::JobDone {
        id: 3,
        result: Ok("planned; waiting for confirmation".into()),
        cancelled: false,
    });
    assert_eq!(a.jobs.list.len(), 1, "the prune plan stayed in the pane");
    assert!(!e.iter().any(|e| matches!(e, Effect::RecordJob(_))));
    a.update(Action::JobStarted {
        id: 4,
        title: "plan: drill of web01".into(),
        kind: lifeboat_core::jobs::JobKind::Drill,
    });
    a.update(Action::JobDone {
        id: 4,
        result: Ok("PASS".into()),
        cancelled: false,
    });
    assert_eq!(a.jobs.list.len(), 2, "a drill is a job the admin ran");
}

#[test]
fn a_policy_sets_a_vms_rpo() {
    let mut a = app();
    // web01's newest backup is 2 h old: fresh by default, late under a
    // policy with rpo_late = 1h, rpo_stale = 90m; stale under 30m/1h.
    assert_eq!(a.rpo("web01"), Rpo::Ok);
    a.rpo_policy.insert("web01".into(), (60, 180));
    assert_eq!(a.rpo("web01"), Rpo::Late);
    a.rpo_policy.insert("web01".into(), (30, 60));
    assert_eq!(a.rpo("web01"), Rpo::Stale);
}

#[test]
fn policy_runs_now_and_the_prune_plan_comes_before_any_deletion() {
    let mut a = app();
    for _ in 0..4 {
        a.update(key(KeyCode::Down));
    }
    assert_eq!(a.selected_row().unwrap().vm, "web01");
    // Without a policy, N explains instead of running anything.
    assert!(a.update(key(KeyCode::Char('N'))).is_empty());
    assert!(matches!(&a.dialog, Some(Dialog::Message { title, .. }) if title == "No policy"));
    a.update(key(KeyCode::Esc));
    let cfg = lifeboat_core::config::Config::parse(
        std::path::Path::new("test.toml"),
        "default_policy = \"nightly\"\n[policy.nightly]\nschedule = \"daily 02:30\"\ntimezone = \"UTC\"\nkeep_daily = 7\n[[vm]]\nname = \"web01\"\n",
    )
    .unwrap();
    let status = lifeboat_core::rpo::assess(
        &cfg,
        &a.backups,
        &Default::default(),
        &[],
        &Default::default(),
        now(),
    );
    a.update(Action::Rpo(status));
    let text = screen(&a, 160, 48);
    assert!(
        text.contains("policy  nightly · next ") && text.contains("RPO ok"),
        "{text}"
    );
    assert!(a.update(key(KeyCode::Char('N'))).is_empty());
    assert!(
        matches!(&a.dialog, Some(Dialog::Confirm { title, .. }) if title.contains("Run policy nightly for web01"))
    );
    assert_eq!(
        a.update(key(KeyCode::Enter)),
        vec![Effect::RunPolicy { vm: "web01".into() }]
    );
    // K asks the core for the prune plan; deleting waits for a yes.
    assert_eq!(
        a.update(key(KeyCode::Char('K'))),
        vec![Effect::PlanPrune { vm: "web01".into() }]
    );
    a.update(Action::Planned {
        plan: 3,
        title: "Prune web01".into(),
        lines: vec![
            "policy nightly: 5 of 12 sets would be removed (5 backups)".into(),
            "2026-11-20 02:30  1 volumes  REMOVED".into(),
        ],
        noop: false,
    });
    assert!(
        matches!(&a.dialog, Some(Dialog::Confirm { lines, .. }) if lines[1].contains("REMOVED"))
    );
    assert_eq!(a.update(key(KeyCode::Enter)), vec![Effect::RunPlan(3)]);
}

#[test]
fn a_job_whose_end_arrives_before_its_start_still_ends() {
    let mut a = app();
    a.update(Action::JobDone {
        id: 41,
        result: Ok("fast".into()),
        cancelled: false,
    });
    a.update(Action::JobStarted {
        id: 41,
        title: "compare".into(),
        kind: lifeboat_core::jobs::JobKind::Other,
    });
    let j = a.jobs.list.iter().find(|j| j.id == 41).unwrap();
    assert!(
        matches!(j.state, super::app::JobState::Done(_)),
        "{:?}",
        j.state
    );
    // Quitting does not ask: nothing runs.
    assert_eq!(a.update(key(KeyCode::Char('q'))), vec![Effect::Quit]);
}

#[test]
fn drill_key_asks_the_source_and_shows_phases_and_serial_console() {
    let mut a = app();
    a.drill_defaults.insert("db01".into(), "offsite".into());
    a.update(key(KeyCode::Char('D')));
    let s = screen(&a, 100, 30);
    assert!(s.contains("Drill from which repository?"), "{s}");
    assert!(s.contains("> offsite  (default)"), "{s}");
    // Up picks local; Enter asks for the drill.
    a.update(key(KeyCode::Up));
    let fx = a.update(key(KeyCode::Enter));
    assert_eq!(
        fx,
        vec![Effect::Drill {
            vm: "db01".into(),
            source: "local".into()
        }]
    );
    a.update(Action::JobStarted {
        id: 9,
        title: "drill web01 from local".into(),
        kind: lifeboat_core::jobs::JobKind::Drill,
    });
    let snap = |phase: &str| lifeboat_core::jobs::Snapshot {
        phase: phase.into(),
        bytes_done: 0,
        bytes_total: 0,
        objects_done: 0,
        objects_total: 0,
        job_bytes_done: 300 << 20,
        job_bytes_total: 600 << 20,
        elapsed_secs: 3.0,
        bytes_per_sec: 0.0,
        eta_secs: None,
    };
    for phase in ["fetch: planning", "restore", "verify: root.raw"] {
        a.update(Action::JobProgress {
            id: 9,
            snapshot: snap(phase),
            output: Vec::new(),
            parts: Vec::new(),
        });
    }
    a.update(Action::JobProgress {
        id: 9,
        snapshot: snap("boot: waiting for \"web01 login:\" on the serial console"),
        output: vec!["SYSLINUX 6.04".into(), "lifeboat-guest web01: up".into()],
        parts: Vec::new(),
    });
    let s = screen(&a, 120, 40);
    assert!(s.contains("✓ fetch") && s.contains("✓ verify"), "{s}");
    assert!(s.contains("▶ boot") && s.contains("· checks"), "{s}");
    assert!(
        s.contains("serial console: drill web01") && s.contains("lifeboat-guest web01: up"),
        "{s}"
    );
    // The report's lines all go to the job's log; the tree shows the result.
    a.update(Action::JobDone {
        id: 9,
        result: Ok("drill web01 from local: PASS\n  RTO 4.0s: fetch 0.0s".into()),
        cancelled: false,
    });
    let j = a.jobs.list.iter().find(|j| j.id == 9).unwrap();
    assert!(
        j.log.iter().any(|l| l.ends_with("RTO 4.0s: fetch 0.0s")),
        "{:?}",
        j.log
    );
    assert_eq!(
        j.state,
        crate::tui::app::JobState::Done("drill web01 from local: PASS".into())
    );
}

/// Narrow screens drop whole columns, never parts of values: with four
/// remotes at 80 columns, and at the smallest size, every time and size
/// shown is whole; VM names are not cut to make room for drill marks.
#[test]
fn narrow_screens_drop_whole_columns() {
    let mut a = App::new(
        "/srv/lifeboat".into(),
        vec![("webserver01".into(), vec!["root".into()])],
        (1..=4)
            .map(|i| (format!("site{i}"), format!("http://10.0.0.{i}:8473/")))
            .collect(),
        now(),
    );
    let mut b = vec![backup("webserver01", "root", 2, 1)];
    b[0].1.stats.nonzero_bytes = 140 << 20;
    a.update(Action::Loaded(shared(b)));
    for i in 1..=4 {
        a.update(Action::RemoteListed {
            name: format!("site{i}"),
            result: Ok((5.0, BTreeSet::new())),
        });
    }
    let mut report = lifeboat_core::drill::DrillReport {
        vm: "webserver01".into(),
        source: "site1".into(),
        reference: "latest".into(),
        started_at: now() - Duration::hours(3),
        ended_at: now() - Duration::hours(3),
        outcome: lifeboat_core::drill::DrillOutcome::Pass,
        failed_phase: None,
        error: None,
        backup_time: None,
        set: None,
        manifests: Vec::new(),
        rpo_secs: None,
        rto_secs: 1.0,
        phases: Vec::new(),
        definition: None,
        boot: None,
    };
    report.vm = "webserver01".into();
    a.update(Action::Drills([("webserver01".to_string(), report)].into()));
    web01_like(&mut a);
    let s = screen(&a, 80, 24);
    let t = (now() - Duration::hours(2))
        .format("%Y-%m-%d %H:%M")
        .to_string();
    assert!(s.contains(&t), "the time is cut at 80 columns:\n{s}");
    assert!(s.contains("140.0 MiB"), "the size lost its unit:\n{s}");
    assert!(s.contains("webserver01"), "the VM name is cut:\n{s}");
    let s = screen(&a, 60, 16);
    let short = (now() - Duration::hours(2))
        .format("%m-%d %H:%M")
        .to_string();
    assert!(s.contains(&short), "the time is cut at 60x16:\n{s}");
    assert!(s.contains("webserver"), "the VM name is cut at 60x16:\n{s}");
}

/// Opens the timeline of the only VM.
fn web01_like(a: &mut App) {
    a.update(key(KeyCode::Enter));
}

/// A volume whose newest backup failed verify is not fresh, whatever its
/// age, in the pane as in `status --rpo`; the Details pane takes focus,
/// scrolls and cuts long lines with `…`.
#[test]
fn broken_backups_and_a_focusable_details_pane() {
    use lifeboat_core::repo::state::VerifyMark;
    let mut a = app();
    let newest: Vec<Id> = a
        .backups
        .iter()
        .filter(|(k, _)| k.vm == "web01")
        .max_by_key(|(_, m)| m.created_at)
        .map(|(k, _)| vec![k.id])
        .unwrap();
    a.update(Action::VerifyState(
        [(
            newest[0],
            VerifyMark {
                at: now(),
                deep: true,
                ok: false,
            },
        )]
        .into(),
    ));
    assert_eq!(a.rpo("web01"), Rpo::VerifyFailed);
    let s = screen(&a, 100, 30);
    assert!(s.contains("BROKEN"), "{s}");
    // Tab reaches Details at 100 columns; z zooms it.
    a.update(Action::Resize(100, 30));
    for _ in 0..5 {
        if a.focus == Pane::Details {
            break;
        }
        a.update(key(KeyCode::Tab));
    }
    assert_eq!(a.focus, Pane::Details);
    a.update(key(KeyCode::Char('z')));
    let s = screen(&a, 100, 30);
    assert!(s.contains(" Details "), "{s}");
    a.update(key(KeyCode::Char('z')));
    let s = screen(&a, 100, 30);
    assert!(s.contains('…'), "a cut line says so:\n{s}");
}

/// A remote that stays down is said once, not at every refresh: the Log
/// does not repeat it and a job's result in the status line stays.
#[test]
fn an_unreachable_remote_is_said_once() {
    let mut a = app();
    let down = || Action::RemoteListed {
        name: "offsite".into(),
        result: Err("connection refused".into()),
    };
    a.update(down());
    a.update(Action::JobStarted {
        id: 4,
        title: "verify".into(),
        kind: lifeboat_core::jobs::JobKind::Other,
    });
    a.update(Action::JobDone {
        id: 4,
        result: Ok("all 14 backups intact".into()),
        cancelled: false,
    });
    a.dialog = None;
    for _ in 0..3 {
        a.update(down());
    }
    let said = a
        .log
        .lines
        .iter()
        .filter(|l| l.contains("offsite is unreachable"))
        .count();
    assert_eq!(said, 1, "{:?}", a.log.lines);
    let status = a
        .status
        .as_ref()
        .map(|s| s.text.clone())
        .unwrap_or_default();
    assert!(status.contains("all 14 backups intact"), "{status}");
    // A new reason is news.
    a.update(Action::RemoteListed {
        name: "offsite".into(),
        result: Err("no answer within 3 s".into()),
    });
    let status = a
        .status
        .as_ref()
        .map(|s| s.text.clone())
        .unwrap_or_default();
    assert!(status.contains("no answer within 3 s"), "{status}");
}

/// Asked whether to cancel a job, each answer says what it does.
#[test]
fn the_cancel_dialog_says_what_each_answer_does() {
    let mut a = app();
    a.update(Action::JobStarted {
        id: 2,
        title: "push web01 → offsite".into(),
        kind: lifeboat_core::jobs::JobKind::Other,
    });
    a.focus = Pane::Jobs;
    a.jobs.sel = a.jobs.list.len() - 1;
    a.update(key(KeyCode::Char('x')));
    let s = screen(&a, 100, 30);
    assert!(s.contains("Cancel job #2?"), "{s}");
    assert!(s.contains("keep it running"), "{s}");
    assert!(!s.contains("Esc/n cancel"), "{s}");
}

/// A drill's preselected source holds the VM: a default remote known to
/// hold nothing of it gives way to the local repository.
#[test]
fn a_drill_source_that_holds_nothing_is_not_preselected() {
    let mut a = app();
    a.update(Action::RemoteBrowsed {
        name: "offsite".into(),
        result: Ok(shared(vec![backup("web01", "root", 30, 9)])),
    });
    a.drill_defaults.insert("db01".into(), "offsite".into());
    a.drill_defaults.insert("web01".into(), "offsite".into());
    // db01 is the first row.
    a.update(key(KeyCode::Char('D')));
    match &a.dialog {
        Some(Dialog::ChooseDrillSource {
            vm,
            sources,
            choice,
        }) => {
            assert_eq!(vm, "db01");
            assert_eq!(sources[*choice], "local", "{sources:?}");
        }
        other => panic!("{other:?}"),
    }
    a.dialog = None;
    // web01 is on offsite: its default stands.
    while a.tree()[a.browser.tree_sel].vm != "web01" {
        a.update(key(KeyCode::Char('j')));
    }
    a.update(key(KeyCode::Char('D')));
    match &a.dialog {
        Some(Dialog::ChooseDrillSource {
            sources, choice, ..
        }) => assert_eq!(sources[*choice], "offsite"),
        other => panic!("{other:?}"),
    }
}

/// The console and `status --rpo` (and `/metrics`, which reads the same
/// assessment) agree on every VM's state: the same function decides it.
#[test]
fn the_console_and_status_agree_on_every_vm_state() {
    use lifeboat_core::daemon::runs::{DaemonState, RunOutcome, RunRecord};
    let config = lifeboat_core::config::Config::parse(
        std::path::Path::new("c.toml"),
        r#"repository = "/r"
[[vm]]
name = "fresh01"
[[vm.volume]]
name = "root"
path = "/vm/a"
[[vm]]
name = "split01"
[[vm.volume]]
name = "root"
path = "/vm/b"
[[vm.volume]]
name = "data"
path = "/vm/c"
[[vm]]
name = "half01"
[[vm.volume]]
name = "root"
path = "/vm/d"
[[vm.volume]]
name = "logs"
path = "/vm/e"
[[vm]]
name = "failed01"
[[vm.volume]]
name = "root"
path = "/vm/f"
[[vm]]
name = "late01"
[[vm.volume]]
name = "root"
path = "/vm/g"
[[vm]]
name = "broken01"
[[vm.volume]]
name = "root"
path = "/vm/h"
"#,
    )
    .unwrap();
    let backups = vec![
        backup("fresh01", "root", 1, 1),
        // The data volume stalled three days ago while root stays fresh:
        // the VM is as old as its stalest volume.
        backup("split01", "root", 1, 2),
        backup("split01", "data", 80, 3),
        // One configured volume was never backed up.
        backup("half01", "root", 1, 4),
        backup("failed01", "root", 1, 5),
        // Between the default late (26 h) and stale (72 h) thresholds.
        backup("late01", "root", 30, 6),
        backup("broken01", "root", 1, 7),
        // An old VM no longer in the config, its newest set whole.
        backup("gone01", "root", 100, 8),
    ];
    let mut verify = std::collections::BTreeMap::new();
    verify.insert(
        backups[6].0.id,
        lifeboat_core::repo::state::VerifyMark {
            at: now(),
            deep: false,
            ok: false,
        },
    );
    let runs = vec![RunRecord {
        vm: "failed01".into(),
        policy: "p".into(),
        slot: None,
        attempt: 1,
        started_at: now() - Duration::minutes(30),
        ended_at: now() - Duration::minutes(29),
        outcome: RunOutcome::Failed,
        bytes_new: 0,
        bytes_pushed: 0,
        seconds: 60.0,
        steps: vec![],
        error: Some("push failed".into()),
        committed: None,
    }];
    let status = lifeboat_core::rpo::assess(
        &config,
        &backups,
        &verify,
        &runs,
        &DaemonState::default(),
        now(),
    );
    let inventory = config.inventory();
    let mut a = App::new("/r".into(), inventory, vec![], now());
    a.update(Action::Loaded(shared(backups)));
    a.update(Action::VerifyState(verify));
    a.update(Action::Rpo(status.clone()));
    let expected = [
        ("fresh01", Rpo::Ok),
        ("split01", Rpo::Stale),
        ("half01", Rpo::NeverBackedUp),
        ("failed01", Rpo::LastJobFailed),
        ("late01", Rpo::Late),
        ("broken01", Rpo::VerifyFailed),
        ("gone01", Rpo::Stale),
    ];
    for (vm, want) in expected {
        let s = status.iter().find(|r| r.vm == vm).unwrap();
        assert_eq!(s.state, want, "status --rpo for {vm}");
        assert_eq!(a.rpo(vm), want, "console for {vm}");
        assert_eq!(a.newest(vm), s.newest, "recovery point of {vm}");
    }
}

#[test]
fn file_browser_opens_descends_searches_and_extracts() {
    use super::app::files::FileRow;
    let mut a = app();
    for _ in 0..4 {
        a.update(key(KeyCode::Down));
    }
    a.update(key(KeyCode::Enter));
    let effects = a.update(key(KeyCode::Char('f')));
    let Some(Effect::ListFiles {
        key: k,
        path: None,
        find: None,
        ..
    }) = effects.first().cloned()
    else {
        panic!("{effects:?}")
    };
    let row = |path: &str, dir: bool| FileRow {
        path: path.into(),
        name: path.rsplit('/').next().unwrap_or(path).into(),
        dir,
        detail: String::new(),
    };
    a.update(Action::FilesListed {
        key: k.clone(),
        path: None,
        find: None,
        result: Ok((vec![row("p1", true)], "read 1".into())),
    });
    // Enter opens the filesystem's root.
    let effects = a.update(key(KeyCode::Enter));
    assert!(
        matches!(&effects[..], [Effect::ListFiles { path: Some(p), .. }] if p == "p1/"),
        "{effects:?}"
    );
    a.update(Action::FilesListed {
        key: k.clone(),
        path: Some("p1/".into()),
        find: None,
        result: Ok((
            vec![row("p1/etc", true), row("p1/hosts", false)],
            String::new(),
        )),
    });
    // / asks what to search for, then lists the matches.
    a.update(key(KeyCode::Char('/')));
    assert!(
        matches!(a.dialog, Some(Dialog::Prompt { .. })),
        "{:?}",
        a.dialog
    );
    for c in "host".chars() {
        a.update(key(KeyCode::Char(c)));
    }
    let effects = a.update(key(KeyCode::Enter));
    assert!(
        matches!(&effects[..], [Effect::ListFiles { find: Some(f), path: Some(p), .. }] if f == "host" && p == "p1/"),
        "{effects:?}"
    );
    a.update(Action::FilesListed {
        key: k.clone(),
        path: Some("p1/".into()),
        find: Some("host".into()),
        result: Ok((vec![row("p1/hosts", false)], String::new())),
    });
    // e asks where to, then extracts as a job.
    a.update(key(KeyCode::Char('e')));
    assert!(
        matches!(a.dialog, Some(Dialog::Prompt { .. })),
        "{:?}",
        a.dialog
    );
    let effects = a.update(key(KeyCode::Enter));
    assert!(
        matches!(&effects[..], [Effect::ExtractFiles { path, .. }] if path == "p1/hosts"),
        "{effects:?}"
    );
}
