//! The recovery plans dialog (`S`): each plan's VMs in start order, the
//! service's RPO in the local repository and its last drill; `D` drills
//! the selected plan as a job with a panel per VM.

use crossterm::event::{KeyCode, KeyEvent};
use lifeboat_core::plan::report::PlanReport;

use super::{App, Dialog, Effect};

/// One plan as the dialog shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRow {
    pub name: String,
    /// Where `D` drills it from.
    pub source: String,
    pub network: String,
    /// VM, address, the VMs it starts after; in start order.
    pub members: Vec<(String, Option<String>, Vec<String>)>,
    pub checks: Vec<String>,
    /// The newest consistent point in the local repository: its age and
    /// spread, or why there is none.
    pub rpo: Result<(i64, i64), String>,
    pub last: Option<PlanReport>,
}

/// The dialog's rows from the config, the local backups and the history.
pub fn rows(
    config: &lifeboat_core::config::Config,
    backups: &super::Backups,
    last: &std::collections::BTreeMap<String, PlanReport>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<PlanRow> {
    config
        .plans
        .values()
        .map(|p| {
            let point = lifeboat_core::plan::point::pick_from(
                backups
                    .iter()
                    .map(|(k, m)| (k.vm.as_str(), m.set.as_str(), m.created_at)),
                p,
                None,
                "the local repository",
            );
            PlanRow {
                name: p.name.clone(),
                source: lifeboat_core::config::requests::plan_source(config, p),
                network: p.network.clone(),
                members: p
                    .order()
                    .into_iter()
                    .map(|m| {
                        (
                            m.vm.clone(),
                            m.address.map(|a| a.to_string()),
                            m.after.clone(),
                        )
                    })
                    .collect(),
                checks: p.checks.iter().map(|c| c.name()).collect(),
                rpo: point
                    .map(|pt| (pt.rpo_secs(now), pt.spread_secs))
                    .map_err(|e| e.to_string()),
                last: last.get(&p.name).cloned(),
            }
        })
        .collect()
}

impl App {
    pub(super) fn open_plans(&mut self) {
        if self.plans.is_empty() {
            self.message(
                "Recovery plans",
                "No recovery plans: add a [plan.NAME] table (its VMs, their order and addresses, a private network, checks) to the config. See docs/PLANS.md.",
            );
            return;
        }
        self.dialog = Some(Dialog::Plans { sel: 0 });
    }

    pub(super) fn plans_key(&mut self, sel: usize, k: KeyEvent) -> Vec<Effect> {
        let last = self.plans.len().saturating_sub(1);
        match k.code {
            KeyCode::Down | KeyCode::Char('j') => {
                self.dialog = Some(Dialog::Plans {
                    sel: (sel + 1).min(last),
                })
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.dialog = Some(Dialog::Plans {
                    sel: sel.saturating_sub(1),
                })
            }
            KeyCode::Char('D') | KeyCode::Enter => {
                if let Some(p) = self.plans.get(sel).cloned() {
                    self.log(format!("drilling plan {} from {}…", p.name, p.source));
                    return vec![Effect::PlanDrill { plan: p.name }];
                }
            }
            KeyCode::Esc | KeyCode::Char('q') => {}
            _ => self.dialog = Some(Dialog::Plans { sel }),
        }
        Vec::new()
    }
}
