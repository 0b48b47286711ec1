//! The YAML documents of a resource file, each kept as the text it was written in, so that a
//! file can be written back without one of its documents and lose none of the others'
//! comments or layout.
//!
//! A YAML stream's documents are separated by a directives-end marker, a line that starts
//! with `---` followed by a space, a tab or the end of the line. The marker may not appear
//! at the start of a line inside a document's content (YAML 1.2, §9.2), so splitting at such
//! lines finds the documents the YAML parser finds.

use std::fmt;

use crate::resources::DEFAULT_NAMESPACE;

/// What a resource is known by: its kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectId {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl ObjectId {
    /// The file a resource applied on its own is written to: `<namespace>.<kind>.<name>.yaml`
    /// (a namespace has no `.`, so no two resources share one).
    pub fn file_name(&self) -> String {
        format!(
            "{}.{}.{}.yaml",
            self.namespace,
            self.kind.to_ascii_lowercase(),
            self.name
        )
    }
}

/// One document of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    /// The document's text, its `---` line included when it has one.
    pub text: String,
    /// The resource it defines, when it reads as one (`kind` and `metadata.name` given).
    pub id: Option<ObjectId>,
    /// Whether it holds nothing but blank lines, comments and markers.
    pub empty: bool,
}

/// The documents of `text`, in order; the text of all of them together is `text`.
pub fn split(text: &str) -> Vec<Doc> {
    let mut parts: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        if is_marker(line) && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
        }
        current.push_str(line);
    }
    if !current.is_empty() || parts.is_empty() {
        parts.push(current);
    }
    parts.into_iter().map(read).collect()
}

/// Whether a line starts a document.
fn is_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']))
}

fn read(text: String) -> Doc {
    let value: Option<serde_yaml_ng::Value> = serde_yaml_ng::from_str(&text).ok();
    // A null document (nothing but comments and markers, or `~`) is skipped by the loader.
    let empty = value.as_ref().is_some_and(serde_yaml_ng::Value::is_null);
    let id = value.as_ref().and_then(object_id);
    Doc { text, id, empty }
}

/// The kind, namespace and name of a parsed document.
pub fn object_id(value: &serde_yaml_ng::Value) -> Option<ObjectId> {
    let kind = value.get("kind")?.as_str()?;
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let namespace = match meta.get("namespace") {
        None => DEFAULT_NAMESPACE,
        Some(ns) => ns.as_str()?,
    };
    Some(ObjectId {
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// The text of a file made of `docs`: each starts on its own line, and each after the
/// first with a `---` line.
pub fn join<'a>(docs: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for text in docs {
        if !out.is_empty() {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            if !text.split_inclusive('\n').next().is_some_and(is_marker) {
                out.push_str("---\n");
            }
        }
        out.push_str(text);
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(text: &str) -> Vec<Option<String>> {
        split(text)
            .iter()
            .map(|d| d.id.as_ref().map(|i| i.to_string()))
            .collect()
    }

    #[test]
    fn documents_are_found_where_the_parser_finds_them() {
        let text = "# a comment\nkind: Service\nmetadata: {name: a}\n---\nkind: Service\nmetadata:\n  name: b\n  namespace: x\n--- # c\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  x: |\n    ----- not a marker\n    --- nor this, indented\n";
        assert_eq!(
            ids(text),
            vec![
                Some("Service default/a".into()),
                Some("Service x/b".into()),
                Some("HTTPRoute default/r".into())
            ]
        );
        let joined: String = split(text).iter().map(|d| d.text.as_str()).collect();
        assert_eq!(joined, text, "the documents together are the text");
        let parsed = serde_yaml_ng::Deserializer::from_str(text).count();
        assert_eq!(parsed, 3);
    }

    #[test]
    fn a_leading_marker_and_a_trailing_one_make_no_resource() {
        let docs = split("---\nkind: Service\nmetadata: {name: a}\n---\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[0].id.is_some());
        assert!(docs[1].empty);
        assert!(split("").iter().all(|d| d.empty && d.id.is_none()));
        let comments = split("# only a comment\n");
        assert!(comments[0].empty);
    }

    #[test]
    fn a_document_without_a_name_has_no_id() {
        let docs = split("kind: Service\nmetadata: {}\n---\n[not, a, map]\n---\n{{{\n");
        assert_eq!(docs.len(), 3);
        assert!(docs.iter().all(|d| d.id.is_none() && !d.empty));
    }

    #[test]
    fn join_separates_documents_once() {
        let a = "kind: A\n";
        let b = "---\nkind: B\n";
        let c = "kind: C";
        assert_eq!(join([a, b, c]), "kind: A\n---\nkind: B\n---\nkind: C\n");
        assert_eq!(join(Vec::<&str>::new()), "");
    }
}
