//! How answers from remotes (listings, browsed backups) change the state.

use super::*;

impl App {
    pub(super) fn remote_browsed(
        &mut self,
        name: String,
        result: Result<Backups, String>,
    ) -> Vec<Effect> {
        match result {
            Ok(b) => {
                // The browsed list is the newest word on what the
                // remote holds: the header and presence agree.
                if let Some(r) = self.remotes.iter_mut().find(|r| r.name == name) {
                    let ids: BTreeSet<Id> = b.iter().map(|(k, _)| k.id).collect();
                    if let RemoteState::Ok { backups, .. } = &mut r.state {
                        *backups = ids.len();
                    }
                    r.ids = Some(ids);
                }
                if self.source.as_deref() == Some(name.as_str()) {
                    self.refreshed_at = Some(self.now);
                    self.backups = b.clone();
                    self.rebuild();
                    self.clamp();
                }
                self.remote_backups.insert(name, b);
            }
            Err(e) => {
                if self.source.as_deref() == Some(name.as_str()) {
                    self.dialog = Some(Dialog::Message {
                        title: format!("Cannot browse {name}"),
                        lines: vec![e.clone()],
                        scroll: 0,
                    });
                }
                self.notify(format!("browsing {name}: {e}"), true);
            }
        }
        Vec::new()
    }

    pub(super) fn remote_listed(
        &mut self,
        name: String,
        result: Result<(f64, BTreeSet<Id>), String>,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut problem = None;
        if let Some(r) = self.remotes.iter_mut().find(|r| r.name == name) {
            match result {
                Ok((ms, ids)) => {
                    r.state = RemoteState::Ok {
                        latency_ms: ms,
                        backups: ids.len(),
                    };
                    // The browsed copy is stale when the remote's
                    // list changed: browse it again.
                    let browsed: Option<BTreeSet<Id>> = self
                        .remote_backups
                        .get(&name)
                        .map(|b| b.iter().map(|(k, _)| k.id).collect());
                    if self.source.as_deref() == Some(name.as_str())
                        && browsed.is_some_and(|b| b != ids)
                    {
                        effects.push(Effect::Browse(name.clone()));
                    }
                    r.ids = Some(ids);
                }
                Err(e) => {
                    // Said once when it goes down (or the reason
                    // changes), not at every refresh: a job's
                    // result in the status line stays readable.
                    let news = !matches!(&r.state, RemoteState::Unreachable(old) if *old == e);
                    r.state = RemoteState::Unreachable(e.clone());
                    if news {
                        problem = Some(format!("remote {name} is unreachable: {e}"));
                    }
                }
            }
        }
        if let Some(p) = problem {
            self.notify(p, true);
        }
        effects
    }
}
