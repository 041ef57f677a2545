//! A small, bounded XML tree for libvirt domain documents: parsed with
//! quick-xml under a depth and node limit, edited, written back escaped.

use quick_xml::escape::{escape, unescape};
use quick_xml::events::Event;

use crate::error::{Error, Result};

const MAX_DEPTH: usize = 64;
const MAX_NODES: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Element(Element),
    Text(String),
    Comment(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Element {
    pub(super) name: String,
    pub(super) attrs: Vec<(String, String)>,
    pub(super) children: Vec<Node>,
}

impl Element {
    pub(super) fn new(name: &str) -> Element {
        Element {
            name: name.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    pub(super) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn set_attr(&mut self, name: &str, value: &str) {
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some(a) => a.1 = value.to_string(),
            None => self.attrs.push((name.into(), value.into())),
        }
    }

    pub(super) fn with_attr(mut self, name: &str, value: &str) -> Element {
        self.set_attr(name, value);
        self
    }

    /// Adds a child `<name attr="value"/>`.
    pub(super) fn with_attr_child(mut self, name: &str, attr: &str, value: &str) -> Element {
        self.push(Element::new(name).with_attr(attr, value));
        self
    }

    pub(super) fn with_text(mut self, text: &str) -> Element {
        self.children.push(Node::Text(text.into()));
        self
    }

    pub(super) fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    pub(super) fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.name == name => Some(e),
            _ => None,
        })
    }

    pub(super) fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    pub(super) fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect::<String>()
            .trim()
            .to_string()
    }

    pub(super) fn set_text(&mut self, text: &str) {
        self.children = vec![Node::Text(text.into())];
    }

    pub(super) fn push(&mut self, e: Element) {
        self.children.push(Node::Element(e));
    }

    pub(super) fn write(&self, out: &mut String, indent: usize) {
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("=\"");
            out.push_str(&escape(v.as_str()));
            out.push('"');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        let only_text = self.children.iter().all(|c| matches!(c, Node::Text(_)));
        for c in &self.children {
            match c {
                Node::Element(e) => {
                    if !only_text && !self.has_whitespace() {
                        out.push('\n');
                        out.push_str(&"  ".repeat(indent + 1));
                    }
                    e.write(out, indent + 1);
                }
                Node::Text(t) => out.push_str(&escape(t.as_str())),
                Node::Comment(t) => {
                    out.push_str("<!--");
                    out.push_str(&t.replace("--", "- -"));
                    out.push_str("-->");
                }
            }
        }
        if !only_text && !self.has_whitespace() {
            out.push('\n');
            out.push_str(&"  ".repeat(indent));
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// Whether the element keeps its own whitespace (parsed documents do;
    /// generated ones are indented when written).
    fn has_whitespace(&self) -> bool {
        self.children
            .iter()
            .any(|c| matches!(c, Node::Text(t) if t.trim().is_empty()))
    }
}

/// Removes the child elements `drop` picks, with the indentation before
/// each; returns how many went.
pub(super) fn remove_children(
    children: &mut Vec<Node>,
    mut drop: impl FnMut(&Element) -> bool,
) -> usize {
    let mut out: Vec<Node> = Vec::with_capacity(children.len());
    let mut removed = 0;
    for n in std::mem::take(children) {
        if let Node::Element(e) = &n {
            if drop(e) {
                if matches!(out.last(), Some(Node::Text(t)) if t.trim().is_empty()) {
                    out.pop();
                }
                removed += 1;
                continue;
            }
        }
        out.push(n);
    }
    *children = out;
    removed
}

pub(super) fn xml_error(e: impl std::fmt::Display) -> Error {
    Error::BadInput(format!("the domain XML does not parse: {e}"))
}

/// Parses a document into its root element (declaration, doctype and
/// processing instructions are dropped; comments and whitespace kept).
pub(super) fn parse(xml: &str) -> Result<Element> {
    parse_doc(xml, "domain")
}

/// Parses a libvirt document whose root element must be `root`.
pub(super) fn parse_doc(xml: &str, root_name: &str) -> Result<Element> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut nodes = 0usize;
    let attrs_of = |e: &quick_xml::events::BytesStart| -> Result<Vec<(String, String)>> {
        let mut v = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(xml_error)?;
            let key = std::str::from_utf8(a.key.as_ref())
                .map_err(xml_error)?
                .to_string();
            let val = a
                .normalized_value(quick_xml::XmlVersion::default())
                .map_err(xml_error)?
                .into_owned();
            v.push((key, val));
        }
        Ok(v)
    };
    loop {
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(xml_error("over 100000 nodes"));
        }
        let ev = reader.read_event().map_err(xml_error)?;
        let add = |stack: &mut Vec<Element>, root: &mut Option<Element>, n: Node| -> Result<()> {
            match (stack.last_mut(), n) {
                (Some(top), n) => top.children.push(n),
                (None, Node::Element(e)) => {
                    if root.is_some() {
                        return Err(xml_error("more than one root element"));
                    }
                    *root = Some(e);
                }
                (None, Node::Text(t)) if t.trim().is_empty() => {}
                (None, Node::Comment(_)) => {}
                (None, Node::Text(_)) => return Err(xml_error("text outside the root element")),
            }
            Ok(())
        };
        match ev {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(xml_error("nested over 64 levels"));
                }
                let name = std::str::from_utf8(e.name().as_ref())
                    .map_err(xml_error)?
                    .to_string();
                stack.push(Element {
                    name,
                    attrs: attrs_of(&e)?,
                    children: Vec::new(),
                });
            }
            Event::Empty(e) => {
                let name = std::str::from_utf8(e.name().as_ref())
                    .map_err(xml_error)?
                    .to_string();
                let el = Element {
                    name,
                    attrs: attrs_of(&e)?,
                    children: Vec::new(),
                };
                add(&mut stack, &mut root, Node::Element(el))?;
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| xml_error("unbalanced end tag"))?;
                add(&mut stack, &mut root, Node::Element(el))?;
            }
            Event::Text(t) => {
                let s = t.decode().map_err(xml_error)?;
                add(&mut stack, &mut root, Node::Text(s.into_owned()))?;
            }
            Event::GeneralRef(r) => {
                let name = r.decode().map_err(xml_error)?;
                let s = unescape(&format!("&{name};"))
                    .map_err(xml_error)?
                    .into_owned();
                add(&mut stack, &mut root, Node::Text(s))?;
            }
            Event::CData(t) => {
                let s = t.decode().map_err(xml_error)?;
                add(&mut stack, &mut root, Node::Text(s.into_owned()))?;
            }
            Event::Comment(t) => {
                let s = t.decode().map_err(xml_error)?;
                add(&mut stack, &mut root, Node::Comment(s.into_owned()))?;
            }
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(xml_error("it ends inside an element"));
    }
    let root = root.ok_or_else(|| xml_error("no root element"))?;
    if root.name != root_name {
        return Err(xml_error(format!(
            "the root element is <{}>, not <{root_name}>",
            crate::text::escape(&root.name)
        )));
    }
    Ok(root)
}
