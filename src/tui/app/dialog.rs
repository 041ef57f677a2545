//! Keys while a dialog is open (prompts are handled in `input`: they take
//! every key).

use crossterm::event::{KeyCode, KeyEvent};

use super::{App, Dialog, Effect};

impl App {
    pub(super) fn dialog_key(&mut self, d: Dialog, k: KeyEvent) -> Vec<Effect> {
        match d {
            Dialog::Confirm {
                title,
                lines,
                effect,
            } => match k.code {
                KeyCode::Enter | KeyCode::Char('y') => return vec![effect],
                KeyCode::Esc | KeyCode::Char('n') => {
                    if let Effect::RunPlan(id) = effect {
                        return vec![Effect::DropPlan(id)];
                    }
                }
                _ => {
                    self.dialog = Some(Dialog::Confirm {
                        title,
                        lines,
                        effect,
                    })
                }
            },
            Dialog::Prompt { .. } | Dialog::Unlock { .. } => self.dialog = Some(d),
            Dialog::Files(v) => return self.files_key(v, k),
            Dialog::Plans { sel } => return self.plans_key(sel, k),
            Dialog::ChooseRemote { scope, choice } => {
                let reachable = self.reachable_remotes();
                match k.code {
                    KeyCode::Down | KeyCode::Char('j') => {
                        self.dialog = Some(Dialog::ChooseRemote {
                            scope,
                            choice: (choice + 1).min(reachable.len().saturating_sub(1)),
                        })
                    }
                    KeyCode::Up | KeyCode::Char('k') => {
                        self.dialog = Some(Dialog::ChooseRemote {
                            scope,
                            choice: choice.saturating_sub(1),
                        })
                    }
                    KeyCode::Enter => return self.plan_push(reachable.get(choice).cloned(), scope),
                    KeyCode::Esc => {}
                    _ => self.dialog = Some(Dialog::ChooseRemote { scope, choice }),
                }
            }
            Dialog::ChooseDrillSource {
                vm,
                sources,
                choice,
            } => match k.code {
                KeyCode::Down | KeyCode::Char('j') => {
                    let choice = (choice + 1).min(sources.len().saturating_sub(1));
                    self.dialog = Some(Dialog::ChooseDrillSource {
                        vm,
                        sources,
                        choice,
                    })
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    self.dialog = Some(Dialog::ChooseDrillSource {
                        vm,
                        sources,
                        choice: choice.saturating_sub(1),
                    })
                }
                KeyCode::Enter => {
                    if let Some(source) = sources.get(choice).cloned() {
                        self.log(format!("drilling {vm} from {source}…"));
                        return vec![Effect::Drill { vm, source }];
                    }
                }
                KeyCode::Esc => {}
                _ => {
                    self.dialog = Some(Dialog::ChooseDrillSource {
                        vm,
                        sources,
                        choice,
                    })
                }
            },
            Dialog::ChooseCloud {
                reference,
                label,
                targets,
                choice,
            } => match k.code {
                KeyCode::Down | KeyCode::Char('j') | KeyCode::Up | KeyCode::Char('k') => {
                    let choice = if matches!(k.code, KeyCode::Down | KeyCode::Char('j')) {
                        (choice + 1).min(targets.len().saturating_sub(1))
                    } else {
                        choice.saturating_sub(1)
                    };
                    self.dialog = Some(Dialog::ChooseCloud {
                        reference,
                        label,
                        targets,
                        choice,
                    })
                }
                KeyCode::Enter => {
                    if let Some(target) = targets.get(choice).cloned() {
                        self.log(format!("planning a restore of {label} into {target}…"));
                        return vec![Effect::PlanCloud {
                            reference,
                            label,
                            target,
                            from: self.source.clone(),
                        }];
                    }
                }
                KeyCode::Esc => {}
                _ => {
                    self.dialog = Some(Dialog::ChooseCloud {
                        reference,
                        label,
                        targets,
                        choice,
                    })
                }
            },
            Dialog::QuitWhileRunning => {
                if matches!(k.code, KeyCode::Char('y') | KeyCode::Enter) {
                    self.quit = true;
                    return vec![Effect::Quit];
                }
            }
            Dialog::Message {
                title,
                lines,
                scroll,
            } => {
                if let Some(scroll) = scrolled(scroll, lines.len(), k) {
                    self.dialog = Some(Dialog::Message {
                        title,
                        lines,
                        scroll,
                    });
                }
            }
            Dialog::Help { scroll } => {
                let n = crate::tui::view::help_lines(self).len();
                if let Some(scroll) = scrolled(scroll, n, k) {
                    self.dialog = Some(Dialog::Help { scroll });
                }
            }
            other @ Dialog::Compare { .. } => {
                if !closes(k) {
                    self.dialog = Some(other);
                }
            }
        }
        Vec::new()
    }
}

/// Esc, Enter, q and ? close a text dialog.
fn closes(k: KeyEvent) -> bool {
    matches!(
        k.code,
        KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::Char('?')
    )
}

/// The new scroll position of a text dialog of `n` lines, or None when
/// the key closes it.
fn scrolled(scroll: usize, n: usize, k: KeyEvent) -> Option<usize> {
    let last = n.saturating_sub(1);
    match k.code {
        _ if closes(k) => None,
        KeyCode::Down | KeyCode::Char('j') => Some((scroll + 1).min(last)),
        KeyCode::Up | KeyCode::Char('k') => Some(scroll.saturating_sub(1)),
        KeyCode::PageDown | KeyCode::Char(' ') => Some((scroll + 10).min(last)),
        KeyCode::PageUp => Some(scroll.saturating_sub(10)),
        KeyCode::Home | KeyCode::Char('g') => Some(0),
        KeyCode::End | KeyCode::Char('G') => Some(last),
        _ => Some(scroll),
    }
}
