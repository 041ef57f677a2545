//! The file browser (`f` on a backup): a volume's filesystems and
//! directories, read from the backup's chunks (in the runner, off this
//! thread); Enter opens, Backspace goes up, `/` searches names, `e`
//! extracts the selected entry into a chosen directory as a job.

use crossterm::event::{KeyCode, KeyEvent};
use lifeboat_core::format::ManifestKey;

use super::{App, Dialog, Effect, LineInput, RestoreWhat};

/// One row: a filesystem (at the top) or an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// What opening or extracting it asks for (`p1/etc/hosts`).
    pub path: String,
    /// As listed (a search shows whole paths).
    pub name: String,
    /// Opens with Enter.
    pub dir: bool,
    /// Mode, owner, size and time; or a filesystem's kind and size.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesView {
    pub key: ManifestKey,
    pub from: Option<String>,
    /// None: the volume's filesystems.
    pub path: Option<String>,
    /// The text searched for, when the rows are search results.
    pub find: Option<String>,
    pub rows: Vec<FileRow>,
    pub selected: usize,
    pub loading: bool,
    pub error: Option<String>,
    /// What reading cost ("read 3 of the volume's 16 chunks").
    pub cost: String,
}

/// The directory above `p1/etc/nginx` (`p1/etc`); above `p1/`: None.
fn parent(path: &str) -> Option<String> {
    let t = path.trim_end_matches('/');
    match t.rsplit_once('/') {
        Some((up, _)) if up.contains('/') => Some(up.to_string()),
        Some((fs, _)) => Some(format!("{fs}/")),
        None => None,
    }
}

impl FilesView {
    fn ask(&self, path: Option<String>, find: Option<String>) -> Effect {
        Effect::ListFiles {
            key: self.key.clone(),
            from: self.from.clone(),
            path,
            find,
        }
    }
}

impl App {
    /// `f`: the selected backup's files.
    pub(super) fn open_files(&mut self) -> Vec<Effect> {
        let Some((key, _)) = self.selected_backup() else {
            self.no_backup();
            return Vec::new();
        };
        let view = FilesView {
            key,
            from: self.source.clone(),
            path: None,
            find: None,
            rows: Vec::new(),
            selected: 0,
            loading: true,
            error: None,
            cost: String::new(),
        };
        let effect = view.ask(None, None);
        self.dialog = Some(Dialog::Files(view));
        vec![effect]
    }

    pub(super) fn files_key(&mut self, mut v: FilesView, k: KeyEvent) -> Vec<Effect> {
        let last = v.rows.len().saturating_sub(1);
        let mut out = Vec::new();
        match k.code {
            KeyCode::Esc | KeyCode::Char('q') => return Vec::new(),
            KeyCode::Down | KeyCode::Char('j') => v.selected = (v.selected + 1).min(last),
            KeyCode::Up | KeyCode::Char('k') => v.selected = v.selected.saturating_sub(1),
            KeyCode::PageDown => v.selected = (v.selected + 10).min(last),
            KeyCode::PageUp => v.selected = v.selected.saturating_sub(10),
            KeyCode::Home | KeyCode::Char('g') => v.selected = 0,
            KeyCode::End | KeyCode::Char('G') => v.selected = last,
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') if !v.loading => {
                if let Some(r) = v.rows.get(v.selected).filter(|r| r.dir) {
                    let path = if r.path.contains('/') {
                        r.path.clone()
                    } else {
                        format!("{}/", r.path)
                    };
                    out.push(v.ask(Some(path), None));
                    v.loading = true;
                }
            }
            KeyCode::Backspace | KeyCode::Left | KeyCode::Char('h') if !v.loading => {
                let up = match (&v.find, &v.path) {
                    // Leaving a search shows the directory searched.
                    (Some(_), p) => p.clone(),
                    (None, Some(p)) => parent(p),
                    (None, None) => None,
                };
                if v.path.is_some() || v.find.is_some() {
                    out.push(v.ask(up, None));
                    v.loading = true;
                }
            }
            KeyCode::Char('/') if !v.loading => {
                let title = format!(
                    "Search names under {} (any case)",
                    v.path.as_deref().unwrap_or("every filesystem")
                );
                self.dialog = Some(Dialog::Prompt {
                    title,
                    input: LineInput::new(""),
                    what: RestoreWhat::FindFiles(Box::new(v)),
                });
                return Vec::new();
            }
            KeyCode::Char('e') if !v.loading => {
                if let Some(r) = v.rows.get(v.selected).filter(|r| r.path.contains('/')) {
                    let title = format!(
                        "Extract {} from {}/{} into (a directory)",
                        r.path, v.key.vm, v.key.volume
                    );
                    let what = RestoreWhat::Extract {
                        key: v.key.clone(),
                        from: v.from.clone(),
                        path: r.path.clone(),
                    };
                    self.dialog = Some(Dialog::Prompt {
                        title,
                        input: LineInput::new(&format!("./{}-files", v.key.vm)),
                        what,
                    });
                    return Vec::new();
                }
            }
            _ => {}
        }
        self.dialog = Some(Dialog::Files(v));
        out
    }

    /// The runner's answer to `Effect::ListFiles`.
    pub(super) fn files_listed(
        &mut self,
        key: ManifestKey,
        path: Option<String>,
        find: Option<String>,
        result: Result<(Vec<FileRow>, String), String>,
    ) -> Vec<Effect> {
        let Some(Dialog::Files(v)) = &mut self.dialog else {
            return Vec::new();
        };
        if v.key != key {
            return Vec::new();
        }
        v.loading = false;
        match result {
            Ok((rows, cost)) => {
                v.rows = rows;
                v.path = path;
                v.find = find;
                v.selected = 0;
                v.error = None;
                v.cost = cost;
            }
            Err(e) => v.error = Some(e),
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::parent;

    #[test]
    fn parents() {
        assert_eq!(parent("p1/etc/nginx").as_deref(), Some("p1/etc"));
        assert_eq!(parent("p1/etc").as_deref(), Some("p1/"));
        assert_eq!(parent("p1/etc/").as_deref(), Some("p1/"));
        assert_eq!(parent("p1/"), None);
    }
}
