//! The console without a terminal: `update` (actions in, state and effects
//! out) and whole screens through ratatui's TestBackend with a fixed clock.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use lifeboat_core::repo::manifest::{
    ImageFormat, Labels, Manifest, Role, SourceInfo, Stats, VmInfo, VolumeInfo,
};
use lifeboat_core::repo::{Id, ManifestKey};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::app::{Action, App, Dialog, Effect, Pane, Rpo};
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
    a.update(Action::Loaded(b));
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
    assert_eq!(a.rpo("web01"), Rpo::Fresh);
    assert_eq!(a.rpo("db01"), Rpo::Stale);
    assert_eq!(a.rpo("new01"), Rpo::Never);
    // Down to web01, Enter opens its timeline.
    for _ in 0..4 {
        a.update(key(KeyCode::Char('j')));
    }
    assert_eq!(a.selected_row().unwrap().vm, "web01");
    a.update(key(KeyCode::Enter));
    assert_eq!(a.focus, Pane::Timeline);
    assert_eq!(a.timeline().len(), 12);
    a.update(key(KeyCode::Down));
    assert_eq!(a.timeline_sel, 1);
    // Moving past the end clamps.
    for _ in 0..50 {
        a.update(key(KeyCode::Down));
    }
    assert_eq!(a.timeline_sel, 11);
    // Presence: the newest is missing on the remote, the oldest is held.
    let newest = a.timeline()[0].0.clone();
    let oldest = a.timeline()[11].0.clone();
    assert_eq!(a.presence(&newest), vec![Some(false)]);
    assert_eq!(a.presence(&oldest), vec![Some(true)]);
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
    });
    assert_eq!(a.update(key(KeyCode::Enter)), vec![Effect::RunPlan(8)]);
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
    a.update(key(KeyCode::Down));
    let e = a.update(key(KeyCode::Char('c')));
    assert!(matches!(&e[..], [Effect::Compare { .. }]));
    a.update(Action::JobStarted {
        id: 7,
        title: "push".into(),
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
    assert!(a.log.iter().any(|l| l.contains("FAILED")));
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
    assert!(s.contains("too small"), "{s}");
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
        result: Ok(remote),
    });
    assert_eq!(a.tree()[0].vm, "ghost01");
    assert_eq!(a.presence_columns(), vec!["local".to_string()]);
    let k = a.timeline()[0].0.clone();
    assert_eq!(a.presence(&k), vec![Some(false)], "ghost01 is not local");
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
    a.tree_sel = 0;
    a.rebuild();
    a.update(key(KeyCode::Enter));
    assert!(a.update(key(KeyCode::Char('C'))).is_empty());
    assert!(matches!(&a.dialog, Some(Dialog::Message { title, .. }) if title == "No live volume"));
    a.update(key(KeyCode::Esc));
    // In a remote view, c compares its copy with the local repository.
    a.update(key(KeyCode::Char('s')));
    a.update(Action::RemoteBrowsed {
        name: "offsite".into(),
        result: Ok(vec![backup("web01", "root", 200, 9)]),
    });
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
    let mut b = a.backups.clone();
    let (k, mut m) = backup("evil", "root", 1, 99);
    m.labels.note = Some("x\x1b]0;pwned\x07\u{202e}y".into());
    m.source.path = "/img\x1b[2J.raw".into();
    b.push((k, m));
    a.update(Action::Loaded(b));
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
