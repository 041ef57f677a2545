//! The core's layering, checked on its own source: no file imports another
//! in a circle, and no file imports from a layer above its own. The table
//! below is the map docs/ARCHITECTURE.md draws; a new module gets a row.
//!
//! Imports are read with `syn` (every `use` and every path that starts
//! with `crate`, `super`, `self` or a child module's name); test modules
//! (`#[cfg(test)]`) are not part of the layering and are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Layers, bottom first. A file may import its own layer and those below.
const LAYERS: &[&str] = &[
    "base",
    "format",
    "model",
    "store",
    "repository",
    "engines",
    "orchestration",
    "config",
    "services",
];

/// Module path prefix → layer; the longest prefix wins.
const MODULES: &[(&str, &str)] = &[
    ("", "base"), // lib.rs: module declarations and the error re-export
    ("error", "base"),
    ("text", "base"),
    ("names", "base"),
    ("sys", "base"),
    ("buf", "base"),
    ("testkit", "services"),
    ("durable", "base"),
    ("jobs", "base"),
    ("retry", "base"),
    ("crypto", "base"),
    ("format", "format"),
    ("vm", "model"),
    ("vm::boot", "orchestration"),
    ("vm::qemu", "orchestration"),
    ("vm::restore", "orchestration"),
    ("vm::instant", "orchestration"),
    ("vm::switch", "orchestration"),
    ("plan", "orchestration"),
    ("store", "store"),
    ("repository", "repository"),
    ("repo", "repository"),
    ("lock", "repository"),
    ("protect", "repository"),
    ("source", "engines"),
    ("live", "engines"),
    ("backup", "engines"),
    ("restore", "engines"),
    ("nbd_export", "engines"),
    ("files", "engines"),
    ("sync", "engines"),
    ("gc", "engines"),
    ("retention", "engines"),
    ("prune", "engines"),
    ("policy", "engines"),
    ("drill", "orchestration"),
    ("cloud", "orchestration"),
    ("config", "config"),
    ("daemon", "services"),
    ("rpo", "services"),
    ("metrics", "services"),
];

fn layer_of(module: &str) -> Option<usize> {
    let (_, layer) = MODULES
        .iter()
        .filter(|(p, _)| p.is_empty() || module == *p || module.starts_with(&format!("{p}::")))
        .max_by_key(|(p, _)| p.len())?;
    LAYERS.iter().position(|l| l == layer)
}

struct Crate {
    /// Module path ("" for lib.rs, "store::local") → its file.
    files: BTreeMap<String, PathBuf>,
    /// Per module, the names it re-exports (`pub use`) → the absolute path
    /// they come from: an import through a re-export depends on the module
    /// that defines the item, not on the one that passes it on.
    reexports: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut files = BTreeMap::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).expect("core source directory") {
                let p = e.expect("directory entry").path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().and_then(|e| e.to_str()) != Some("rs") {
                    continue;
                }
                let rel = p.strip_prefix(src).expect("under src").with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().map(String::as_str) == Some("mod") {
                    parts.pop();
                }
                if parts == ["lib"] {
                    parts.clear();
                }
                files.insert(parts.join("::"), p);
            }
        }
        let mut c = Crate {
            files,
            reexports: BTreeMap::new(),
        };
        for (module, path) in &c.files {
            let file = parse(path);
            let v = Paths::new(module, c.children(module));
            let mut names = BTreeMap::new();
            for item in &file.items {
                if let syn::Item::Use(u) = item {
                    if matches!(u.vis, syn::Visibility::Public(_)) {
                        let mut found = Vec::new();
                        use_names(Vec::new(), &u.tree, &mut found);
                        for (name, segs) in found {
                            if let Some(abs) = v.absolute(&segs) {
                                names.insert(name, abs);
                            }
                        }
                    }
                }
            }
            c.reexports.insert(module.clone(), names);
        }
        c
    }

    /// The module a path names: the longest prefix that is a module, or,
    /// where the next name is re-exported there, the module it comes from.
    fn resolve(&self, segments: &[String]) -> Option<String> {
        self.resolve_at(segments, 0)
    }

    fn resolve_at(&self, segments: &[String], depth: usize) -> Option<String> {
        let n = (1..=segments.len())
            .rev()
            .find(|n| self.files.contains_key(&segments[..*n].join("::")))
            .unwrap_or(0);
        let module = segments[..n].join("::");
        if n == 0 && !self.files.contains_key("") {
            return None;
        }
        if depth < 8 {
            if let Some(next) = segments.get(n) {
                if let Some(src) = self.reexports.get(&module).and_then(|r| r.get(next)) {
                    let full = [src.clone(), segments[n + 1..].to_vec()].concat();
                    return self.resolve_at(&full, depth + 1);
                }
            }
        }
        Some(module)
    }

    fn children(&self, module: &str) -> BTreeSet<String> {
        self.files
            .keys()
            .filter_map(|m| {
                let rest = if module.is_empty() {
                    Some(m.as_str())
                } else {
                    m.strip_prefix(&format!("{module}::"))
                };
                rest.filter(|r| !r.is_empty() && !r.contains("::"))
                    .map(str::to_string)
            })
            .collect()
    }

    /// Every module each file imports (itself and its ancestors excluded
    /// only when they are the same file).
    fn imports(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out = BTreeMap::new();
        for (module, path) in &self.files {
            let file = parse(path);
            let mut v = Paths::new(module, self.children(module));
            for item in &file.items {
                if !is_test_only(item) {
                    v.visit_item(item);
                }
            }
            let deps: BTreeSet<String> = v
                .found
                .iter()
                .filter_map(|segs| self.resolve(segs))
                .filter(|m| m != module)
                .collect();
            out.insert(module.clone(), deps);
        }
        out
    }
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).expect("source file");
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Names a `use` brings in, with the path each comes from.
fn use_names(prefix: Vec<String>, tree: &syn::UseTree, out: &mut Vec<(String, Vec<String>)>) {
    match tree {
        syn::UseTree::Path(p) => {
            let mut next = prefix;
            next.push(p.ident.to_string());
            use_names(next, &p.tree, out);
        }
        syn::UseTree::Name(n) if n.ident == "self" => {
            if let Some(last) = prefix.last() {
                out.push((last.clone(), prefix.clone()));
            }
        }
        syn::UseTree::Name(n) => {
            let mut next = prefix;
            next.push(n.ident.to_string());
            out.push((n.ident.to_string(), next));
        }
        syn::UseTree::Rename(r) => {
            let mut next = prefix;
            if r.ident != "self" {
                next.push(r.ident.to_string());
            }
            out.push((r.rename.to_string(), next));
        }
        syn::UseTree::Glob(_) => {}
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_names(prefix.clone(), t, out);
            }
        }
    }
}

fn is_test_only(item: &syn::Item) -> bool {
    let attrs = match item {
        syn::Item::Mod(m) => &m.attrs,
        syn::Item::Fn(f) => &f.attrs,
        syn::Item::Use(u) => &u.attrs,
        syn::Item::Impl(i) => &i.attrs,
        _ => return false,
    };
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

/// Collects absolute module paths a file mentions.
struct Paths {
    module: String,
    children: BTreeSet<String>,
    found: Vec<Vec<String>>,
}

impl Paths {
    fn new(module: &str, children: BTreeSet<String>) -> Paths {
        Paths {
            module: module.to_string(),
            children,
            found: Vec::new(),
        }
    }

    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let here: Vec<String> = if self.module.is_empty() {
            Vec::new()
        } else {
            self.module.split("::").map(str::to_string).collect()
        };
        let first = segments.first()?;
        match first.as_str() {
            "crate" => Some(segments[1..].to_vec()),
            "self" => Some([here, segments[1..].to_vec()].concat()),
            "super" => {
                let mut base = here;
                let mut rest = segments;
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop();
                    rest = &rest[1..];
                }
                Some([base, rest.to_vec()].concat())
            }
            c if self.children.contains(c) => Some([here, segments.to_vec()].concat()),
            _ => None,
        }
    }

    fn add(&mut self, segments: Vec<String>) {
        if let Some(abs) = self.absolute(&segments) {
            self.found.push(abs);
        }
    }
}

fn use_paths(prefix: Vec<String>, tree: &syn::UseTree, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            let mut next = prefix;
            next.push(p.ident.to_string());
            use_paths(next, &p.tree, out);
        }
        syn::UseTree::Name(n) => {
            let mut next = prefix;
            if n.ident != "self" {
                next.push(n.ident.to_string());
            }
            out.push(next);
        }
        syn::UseTree::Rename(r) => {
            let mut next = prefix;
            if r.ident != "self" {
                next.push(r.ident.to_string());
            }
            out.push(next);
        }
        syn::UseTree::Glob(_) => out.push(prefix),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(prefix.clone(), t, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut paths = Vec::new();
        use_paths(Vec::new(), &u.tree, &mut paths);
        for p in paths {
            self.add(p);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        // An inline module's paths are relative to it; the layering is
        // per file, so only its absolute (`crate::`) paths are read.
        if let Some((_, items)) = &m.content {
            let mut inner = Paths {
                module: format!("{}::{}", self.module, m.ident),
                children: BTreeSet::new(),
                found: Vec::new(),
            };
            for item in items {
                if !is_test_only(item) {
                    inner.visit_item(item);
                }
            }
            self.found.extend(inner.found.into_iter().filter(|p| {
                !p.join("::")
                    .starts_with(&format!("{}::{}", self.module, m.ident))
            }));
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segs.len() > 1 {
            self.add(segs);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Paths inside format!/matches! and friends.
        let text = m.tokens.to_string();
        for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == ' '))
        {
            let compact: String = word.split_whitespace().collect();
            if compact.contains("::") {
                let segs: Vec<String> = compact.split("::").map(str::to_string).collect();
                if segs.iter().all(|s| !s.is_empty()) {
                    self.add(segs);
                }
            }
        }
        syn::visit::visit_macro(self, m);
    }
}

fn core() -> Crate {
    Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn every_module_has_a_layer() {
    let c = core();
    let missing: Vec<&String> = c
        .files
        .keys()
        .filter(|m| {
            !m.is_empty()
                && !MODULES
                    .iter()
                    .any(|(p, _)| !p.is_empty() && (*m == p || m.starts_with(&format!("{p}::"))))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a row in tests/layers.rs MODULES: {missing:?}"
    );
}

#[test]
fn no_file_imports_from_a_higher_layer() {
    let c = core();
    let mut bad = Vec::new();
    for (m, deps) in c.imports() {
        let Some(mine) = layer_of(&m) else { continue };
        for d in deps {
            if let Some(theirs) = layer_of(&d) {
                if theirs > mine {
                    bad.push(format!(
                        "{m} ({}) imports {d} ({})",
                        LAYERS[mine], LAYERS[theirs]
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports from a higher layer:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_import_cycle() {
    let c = core();
    let graph = c.imports();
    let cycles = strongly_connected(&graph);
    let shown: Vec<String> = cycles
        .iter()
        .map(|comp| {
            let edges: Vec<String> = comp
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| comp.contains(*b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            edges.join(", ")
        })
        .collect();
    assert!(shown.is_empty(), "import cycles:\n{}", shown.join("\n"));
}

/// Tarjan's algorithm; components of more than one module.
fn strongly_connected(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct S<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut S<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !g.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = S {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The checker itself: a cycle and an upward import are found.
#[test]
fn the_checker_finds_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    g.insert("d".to_string(), BTreeSet::from(["a".to_string()]));
    let found = strongly_connected(&g);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 3);
    assert!(layer_of("store::local") < layer_of("repository"));
    assert!(layer_of("vm::boot") > layer_of("vm::domain"));
}
