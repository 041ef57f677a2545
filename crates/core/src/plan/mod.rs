//! Recovery plans: a service of several VMs recovered together. A plan
//! (`[plan.NAME]` in the config) names its VMs, which start after which
//! (a VM starts once the VMs it waits for pass their checks), a private
//! network that joins them to each other and to nothing else, the
//! addresses the VMs expect on it, and checks that cross VMs.
//!
//! The plan is checked whole when the config loads: unknown or repeated
//! VMs, waits on VMs outside the plan or in a circle, addresses outside
//! the network or shared, checks of VMs outside the plan are refused with
//! the file and line.

pub mod drill;
pub mod point;
pub mod report;
pub mod restore;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::names::is_valid_name;
use crate::vm::qemu::Accel;
use crate::vm::HttpCheck;

/// `[plan.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// The plan's VMs, in the order written (`[[plan.NAME.vm]]`).
    #[serde(default, rename = "vm")]
    pub vms: Vec<MemberConfig>,
    /// The private network's name (a restore's libvirt network; default
    /// `lifeboat-NAME`).
    pub network: Option<String>,
    /// The private network's IPv4 subnet, e.g. `10.10.0.0/24`.
    pub subnet: Option<toml::Spanned<String>>,
    /// Checks that run once every VM is up (`[[plan.NAME.check]]`).
    #[serde(default, rename = "check")]
    pub checks: Vec<PlanCheckConfig>,
    /// When the daemon drills the plan (a schedule like a policy's).
    pub schedule: Option<toml::Spanned<String>>,
    /// Where it is drilled from: a remote's name, or "local".
    pub from: Option<toml::Spanned<String>>,
    /// tcg (default), kvm or auto.
    pub accel: Option<toml::Spanned<String>>,
    /// Where restored images go while a drill runs (default: $TMPDIR).
    pub scratch: Option<PathBuf>,
    /// Seconds the plan's own checks may take once every VM is up
    /// (default 120).
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub name: toml::Spanned<String>,
    /// The address the VM's own settings give it on the plan's network.
    pub address: Option<toml::Spanned<String>>,
    /// VMs whose checks must pass before this one starts.
    #[serde(default)]
    pub after: Vec<toml::Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanCheckConfig {
    /// The VM the check reaches (through a forwarded loopback port).
    pub vm: toml::Spanned<String>,
    pub http: Option<HttpCheck>,
    pub tcp: Option<u16>,
}

/// A checked plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub network: String,
    pub subnet: Option<Subnet>,
    pub members: Vec<Member>,
    pub checks: Vec<PlanCheck>,
    pub schedule: Option<crate::policy::Schedule>,
    pub from: Option<String>,
    pub accel: Accel,
    pub scratch: Option<PathBuf>,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub vm: String,
    pub address: Option<Ipv4Addr>,
    pub after: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCheck {
    pub vm: String,
    pub kind: PlanCheckKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanCheckKind {
    Http(HttpCheck),
    Tcp(u16),
}

impl PlanCheck {
    pub fn port(&self) -> u16 {
        match &self.kind {
            PlanCheckKind::Http(h) => h.port,
            PlanCheckKind::Tcp(p) => *p,
        }
    }

    pub fn name(&self) -> String {
        let what = match &self.kind {
            PlanCheckKind::Http(h) => format!("http :{}{}", h.port, crate::text::escape(&h.path)),
            PlanCheckKind::Tcp(p) => format!("tcp :{p}"),
        };
        format!("{} {what}", self.vm)
    }
}

/// An IPv4 network: its address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let bad = || format!("subnet {s:?} is not like 10.10.0.0/24");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "subnet {s:?}: a prefix of /8 to /30 (room for the VMs and the probe)"
            ));
        }
        let net = Subnet { addr, prefix };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(format!(
                "subnet {s:?} names an address, not a network: use {}/{prefix}",
                Ipv4Addr::from(u32::from(addr) & net.mask())
            ));
        }
        Ok(net)
    }

    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// A host address of this network (not the network's own or its
    /// broadcast address).
    pub fn holds(&self, ip: Ipv4Addr) -> bool {
        let (ip, net) = (u32::from(ip), u32::from(self.addr));
        ip & self.mask() == net && ip != net && ip != net | !self.mask()
    }

    /// The highest host address none of `taken` holds: where lifeboat
    /// asks from on the network (and a restored network's host side).
    pub fn free_host(&self, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let net = u32::from(self.addr);
        let last = (net | !self.mask()) - 1;
        (net + 1..=last)
            .rev()
            .map(Ipv4Addr::from)
            .find(|a| !taken.contains(a))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Plan {
    pub fn member(&self, vm: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.vm == vm)
    }

    /// The start order: each VM after the ones it waits for, otherwise as
    /// written.
    pub fn order(&self) -> Vec<&Member> {
        let mut out: Vec<&Member> = Vec::new();
        while out.len() < self.members.len() {
            let before = out.len();
            for m in &self.members {
                if !out.iter().any(|o| o.vm == m.vm)
                    && m.after.iter().all(|a| out.iter().any(|o| &o.vm == a))
                {
                    out.push(m);
                }
            }
            // Circles are refused at load; never loop on one regardless.
            if out.len() == before {
                break;
            }
        }
        out
    }

    /// Where lifeboat asks from on the plan's network.
    pub fn probe_address(&self) -> Option<Ipv4Addr> {
        let taken: Vec<Ipv4Addr> = self.members.iter().filter_map(|m| m.address).collect();
        self.subnet.and_then(|s| s.free_host(&taken))
    }

    /// Guest ports of `vm` the plan's checks reach.
    pub fn ports_of(&self, vm: &str) -> Vec<u16> {
        self.checks
            .iter()
            .filter(|c| c.vm == vm)
            .map(PlanCheck::port)
            .collect()
    }
}

/// Checks a plan as written. Errors are (byte offset in the file, what is
/// wrong); `remotes` are the names `from` may give.
pub fn check(
    name: &str,
    c: &PlanConfig,
    remotes: &[&str],
) -> Result<Plan, (Option<usize>, String)> {
    let at = |s: &toml::Spanned<String>| Some(s.span().start);
    if !is_valid_name(name) {
        return Err((
            None,
            format!("plan name {name:?} is invalid: use 1 to 128 of A-Z a-z 0-9 . _ -"),
        ));
    }
    if c.vms.is_empty() {
        return Err((
            None,
            format!("plan {name} has no VMs: add [[plan.{name}.vm]] entries with name = \"VM\""),
        ));
    }
    if c.vms.len() > 32 {
        return Err((None, format!("plan {name} has over 32 VMs")));
    }
    let network = c
        .network
        .clone()
        .unwrap_or_else(|| format!("lifeboat-{name}"));
    if !is_valid_name(&network) {
        return Err((
            None,
            format!("plan {name}: network name {network:?} is invalid: use 1 to 128 of A-Z a-z 0-9 . _ -"),
        ));
    }
    let subnet = match &c.subnet {
        Some(s) => {
            Some(Subnet::parse(s.get_ref()).map_err(|e| (at(s), format!("plan {name}: {e}")))?)
        }
        None => None,
    };
    let mut members: Vec<Member> = Vec::new();
    for m in &c.vms {
        let vm = m.name.get_ref();
        if !is_valid_name(vm) {
            return Err((
                at(&m.name),
                format!(
                    "plan {name}: VM name {vm:?} is invalid: use 1 to 128 of A-Z a-z 0-9 . _ -"
                ),
            ));
        }
        if members.iter().any(|x| &x.vm == vm) {
            return Err((at(&m.name), format!("plan {name}: VM {vm} is listed twice")));
        }
        let address = match &m.address {
            None => None,
            Some(a) => {
                let ip: Ipv4Addr = a.get_ref().parse().map_err(|_| {
                    (at(a), format!("plan {name}: VM {vm}: address {:?} is not an IPv4 address like 10.10.0.2", a.get_ref()))
                })?;
                let Some(net) = subnet else {
                    return Err((
                        at(a),
                        format!("plan {name}: VM {vm} has an address but the plan has no subnet: add subnet = \"10.10.0.0/24\" (the network the addresses are on)"),
                    ));
                };
                if !net.holds(ip) {
                    return Err((
                        at(a),
                        format!("plan {name}: VM {vm}: address {ip} is not a host address of subnet {net}"),
                    ));
                }
                if let Some(o) = members.iter().find(|x| x.address == Some(ip)) {
                    return Err((
                        at(a),
                        format!("plan {name}: VMs {} and {vm} both have address {ip}", o.vm),
                    ));
                }
                Some(ip)
            }
        };
        members.push(Member {
            vm: vm.clone(),
            address,
            after: Vec::new(),
        });
    }
    for (i, m) in c.vms.iter().enumerate() {
        for a in &m.after {
            let dep = a.get_ref();
            if dep == m.name.get_ref() {
                return Err((at(a), format!("plan {name}: VM {dep} waits for itself")));
            }
            if !members.iter().any(|x| &x.vm == dep) {
                return Err((
                    at(a),
                    format!("plan {name}: VM {} waits for {dep:?}, which is not in the plan (its VMs: {})", m.name.get_ref(), names(&members)),
                ));
            }
            if !members[i].after.contains(dep) {
                members[i].after.push(dep.clone());
            }
        }
    }
    if let Some(circle) = find_circle(&members) {
        let first = c
            .vms
            .iter()
            .find(|m| m.name.get_ref() == &circle[0])
            .map(|m| m.name.span().start);
        return Err((
            first,
            format!(
                "plan {name}: its VMs wait for each other in a circle ({}): none could start",
                circle.join(" waits for ")
            ),
        ));
    }
    let mut checks = Vec::new();
    for ch in &c.checks {
        let vm = ch.vm.get_ref();
        if !members.iter().any(|x| &x.vm == vm) {
            return Err((
                at(&ch.vm),
                format!(
                    "plan {name}: a check of VM {vm:?}, which is not in the plan (its VMs: {})",
                    names(&members)
                ),
            ));
        }
        let kind = match (&ch.http, ch.tcp) {
            (Some(h), None) => {
                let probe = crate::vm::BootChecks {
                    http: Some(h.clone()),
                    ..Default::default()
                };
                crate::vm::check_checks(&probe)
                    .map_err(|e| (at(&ch.vm), format!("plan {name}: check of {vm}: {e}")))?;
                PlanCheckKind::Http(h.clone())
            }
            (None, Some(p)) if p != 0 => PlanCheckKind::Tcp(p),
            _ => {
                return Err((
                    at(&ch.vm),
                    format!("plan {name}: a check of {vm} gives exactly one of http = {{ port = …, path = …, expect = … }} or tcp = PORT (not 0)"),
                ))
            }
        };
        checks.push(PlanCheck {
            vm: vm.clone(),
            kind,
        });
    }
    if checks.len() > 32 {
        return Err((None, format!("plan {name} has over 32 checks")));
    }
    let schedule = match &c.schedule {
        None => None,
        Some(s) => Some(
            s.get_ref()
                .parse::<crate::policy::Schedule>()
                .map_err(|e| (at(s), format!("plan {name}: schedule: {e}")))?,
        ),
    };
    let from = match &c.from {
        None => None,
        Some(f) => {
            let v = f.get_ref();
            if v != "local" && !remotes.contains(&v.as_str()) {
                return Err((
                    at(f),
                    format!("plan {name}: from {v:?}: no such remote (or use \"local\")"),
                ));
            }
            Some(v.clone())
        }
    };
    let accel = match &c.accel {
        None => Accel::default(),
        Some(a) => a
            .get_ref()
            .parse()
            .map_err(|e: crate::error::Error| (at(a), format!("plan {name}: {e}")))?,
    };
    let timeout_secs = c.timeout_secs.unwrap_or(120);
    if !(1..=86_400).contains(&timeout_secs) {
        return Err((
            None,
            format!("plan {name}: timeout_secs = {timeout_secs}: give 1 s to a day"),
        ));
    }
    let plan = Plan {
        timeout_secs,
        name: name.to_string(),
        network,
        subnet,
        members,
        checks,
        schedule,
        from,
        accel,
        scratch: c.scratch.clone(),
    };
    if plan.subnet.is_some() && plan.probe_address().is_none() {
        return Err((
            c.subnet.as_ref().and_then(at),
            format!("plan {name}: the subnet has no address left for lifeboat's probe: use a larger one"),
        ));
    }
    Ok(plan)
}

fn names(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| m.vm.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A circle of waits, as the VMs in it (the first repeated at the end).
fn find_circle(members: &[Member]) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        members: &[Member],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.iter().any(|d| d == m) {
            return None;
        }
        path.push(m.to_string());
        let after = members
            .iter()
            .find(|x| x.vm == m)
            .map(|x| x.after.clone())
            .unwrap_or_default();
        for a in &after {
            if let Some(c) = visit(a, members, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.push(m.to_string());
        None
    }
    let mut done = Vec::new();
    members
        .iter()
        .find_map(|m| visit(&m.vm, members, &mut Vec::new(), &mut done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<Plan, String> {
        #[derive(Deserialize)]
        struct Doc {
            plan: std::collections::BTreeMap<String, PlanConfig>,
        }
        let d: Doc = toml::from_str(text).map_err(|e| e.to_string())?;
        let (n, c) = d.plan.into_iter().next().unwrap();
        check(&n, &c, &["offsite"]).map_err(|(_, e)| e)
    }

    #[test]
    fn plans_are_checked_whole() {
        let p = plan(
            r#"
[plan.shop]
subnet = "10.10.0.0/24"
from = "offsite"
[[plan.shop.vm]]
name = "web"
address = "10.10.0.3"
after = ["db"]
[[plan.shop.vm]]
name = "db"
address = "10.10.0.2"
[[plan.shop.check]]
vm = "web"
http = { port = 8080, path = "/order", expect = "orders:" }
"#,
        )
        .unwrap();
        assert_eq!(p.network, "lifeboat-shop");
        let order: Vec<&str> = p.order().iter().map(|m| m.vm.as_str()).collect();
        assert_eq!(order, ["db", "web"]);
        assert_eq!(p.probe_address(), Some(Ipv4Addr::new(10, 10, 0, 254)));
        assert_eq!(p.ports_of("web"), [8080]);
        let bad = |t: &str, want: &str| {
            let e = plan(t).unwrap_err();
            assert!(e.contains(want), "{e}");
        };
        let two = |a: &str, b: &str| {
            format!("[plan.p]\nsubnet = \"10.0.0.0/24\"\n[[plan.p.vm]]\nname = \"a\"\n{a}\n[[plan.p.vm]]\nname = \"b\"\n{b}\n")
        };
        bad(
            &two("after = [\"b\"]", "after = [\"a\"]"),
            "a waits for b waits for a",
        );
        bad(&two("after = [\"c\"]", ""), "which is not in the plan");
        bad(&two("after = [\"a\"]", ""), "waits for itself");
        bad(
            &two("address = \"10.0.0.2\"", "address = \"10.0.0.2\""),
            "both have address",
        );
        bad(&two("address = \"10.0.1.2\"", ""), "not a host address");
        bad(&two("address = \"10.0.0.255\"", ""), "not a host address");
        bad(&two("address = \"ten\"", ""), "not an IPv4 address");
        bad(
            "[plan.p]\nsubnet = \"10.0.0.1/24\"\n[[plan.p.vm]]\nname = \"a\"\n",
            "use 10.0.0.0/24",
        );
        bad(
            "[plan.p]\n[[plan.p.vm]]\nname = \"a\"\naddress = \"10.0.0.2\"\n",
            "has no subnet",
        );
        bad("[plan.p]\n", "has no VMs");
        bad(
            "[plan.p]\nfrom = \"nowhere\"\n[[plan.p.vm]]\nname = \"a\"\n",
            "no such remote",
        );
        bad(
            "[plan.p]\n[[plan.p.vm]]\nname = \"a\"\n[[plan.p.check]]\nvm = \"z\"\ntcp = 5\n",
            "not in the plan",
        );
        bad(
            "[plan.p]\n[[plan.p.vm]]\nname = \"a\"\n[[plan.p.check]]\nvm = \"a\"\n",
            "exactly one of",
        );
        bad("[plan.p]\n[[plan.p.vm]]\nname = \"../a\"\n", "invalid");
        assert_eq!(
            Subnet::parse("10.0.0.0/30")
                .unwrap()
                .free_host(&[Ipv4Addr::new(10, 0, 0, 2)]),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
    }
}
