//! What an apply or a delete changes in a set of resource files, worked out before anything
//! is written: the whole new set is validated as the loader validates a directory, and only a
//! valid set yields the files to write.
//!
//! An applied resource replaces the one of the same kind, namespace and name wherever it is
//! stored. It is written back to the file it was in when that file holds nothing else, and
//! otherwise to a file of its own (`<namespace>.<kind>.<name>.yaml`); the file it leaves keeps
//! its other documents as they were written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::docs::{self, Doc, ObjectId};
use crate::authz::DefaultPolicy;
use crate::load::{ValidationError, compile};

/// The files of a store: name → YAML.
pub type Files = BTreeMap<String, String>;

/// What became of one applied resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
}

/// One applied resource: what it is, what was done, and the file that holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub action: Action,
    pub file: String,
}

/// The files to write (`Some`) and to delete (`None`), and what each resource came to.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub changes: BTreeMap<String, Option<String>>,
    pub applied: Vec<Applied>,
}

/// Why a delete cannot be done.
#[derive(Debug)]
pub enum DeleteError {
    NotFound,
    /// The set without the resource is invalid: something refers to it.
    Invalid(Vec<ValidationError>),
}

/// The stored files, parsed into documents.
struct Stored {
    files: BTreeMap<String, Vec<Doc>>,
}

impl Stored {
    fn new(files: &Files) -> Self {
        Self {
            files: files
                .iter()
                .map(|(name, text)| (name.clone(), docs::split(text)))
                .collect(),
        }
    }

    /// The file and document index holding `id`.
    fn find(&self, id: &ObjectId) -> Option<(&str, usize)> {
        self.files.iter().find_map(|(name, docs)| {
            docs.iter()
                .position(|d| d.id.as_ref() == Some(id))
                .map(|i| (name.as_str(), i))
        })
    }

    /// Whether `file` defines only the resource at `index`.
    fn holds_only(&self, file: &str, index: usize) -> bool {
        self.files
            .get(file)
            .is_some_and(|docs| docs.iter().enumerate().all(|(i, d)| i == index || d.empty))
    }

    /// Every file without the documents of `gone`: the ones left as they are, and the new text
    /// (`None`: nothing left) of the ones that lose some.
    fn without(&self, gone: &BTreeSet<ObjectId>) -> (Files, BTreeMap<String, Option<String>>) {
        let mut kept = Files::new();
        let mut changed = BTreeMap::new();
        for (name, docs) in &self.files {
            let removed = |d: &Doc| d.id.as_ref().is_some_and(|id| gone.contains(id));
            if !docs.iter().any(removed) {
                kept.insert(name.clone(), docs.iter().map(|d| d.text.as_str()).collect());
                continue;
            }
            let left: Vec<&Doc> = docs.iter().filter(|d| !removed(d)).collect();
            if left.iter().all(|d| d.empty) {
                changed.insert(name.clone(), None);
            } else {
                let text = docs::join(left.iter().map(|d| d.text.as_str()));
                kept.insert(name.clone(), text.clone());
                changed.insert(name.clone(), Some(text));
            }
        }
        (kept, changed)
    }
}

/// A document's text without its `---` line and surrounding blank space: what is compared
/// to tell an unchanged resource, and what a resource's own file holds.
fn body(text: &str) -> String {
    let trimmed = text.trim_start_matches(['\n', '\r']);
    let rest = match trimmed.split_once('\n') {
        Some((first, rest)) if first.trim_end() == "---" => rest,
        _ => trimmed,
    };
    format!("{}\n", rest.trim())
}

/// An applied resource, its text, where it is stored (file, document) and whether it is the
/// same there.
type Decided<'a> = (&'a ObjectId, String, Option<(&'a str, usize)>, bool);

/// Whether two documents define the same object (comments and layout aside).
fn same_object(a: &str, b: &str) -> bool {
    let parse = |t: &str| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(t).ok();
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => body(a) == body(b),
    }
}

/// Validates `files` (named by `stored_path`, as the store names them in its errors) with
/// `inputs` applied on top (named as the operator gave them), and works out what to write.
pub fn apply(
    files: &Files,
    inputs: &[(String, String)],
    default_policy: DefaultPolicy,
    stored_path: &dyn Fn(&str) -> PathBuf,
) -> Result<Plan, Vec<ValidationError>> {
    let stored = Stored::new(files);
    let input_docs: Vec<Doc> = inputs
        .iter()
        .flat_map(|(_, text)| docs::split(text))
        .collect();
    let ids: BTreeSet<ObjectId> = input_docs.iter().filter_map(|d| d.id.clone()).collect();
    let (others, _) = stored.without(&ids);
    let mut sources: Vec<(PathBuf, String)> = others
        .iter()
        .map(|(name, text)| (stored_path(name), text.clone()))
        .collect();
    sources.extend(
        inputs
            .iter()
            .map(|(name, text)| (PathBuf::from(name), text.clone())),
    );
    compile(&sources, default_policy)?;

    // What each resource comes to; the unchanged ones stay where they are.
    let decided: Vec<Decided<'_>> = input_docs
        .iter()
        .filter_map(|doc| {
            let id = doc.id.as_ref()?;
            let text = body(&doc.text);
            let found = stored.find(id);
            let same = found.is_some_and(|(f, i)| same_object(&stored.files[f][i].text, &text));
            Some((id, text, found, same))
        })
        .collect();
    let moving: BTreeSet<ObjectId> = decided
        .iter()
        .filter(|(_, _, _, same)| !same)
        .map(|(id, ..)| (*id).clone())
        .collect();
    let (kept, mut changes) = stored.without(&moving);
    let mut applied = Vec::new();
    for (id, text, found, same) in decided {
        let (action, file) = match found {
            Some((file, _)) if same => (Action::Unchanged, file.to_string()),
            Some((file, i)) if stored.holds_only(file, i) => (Action::Configured, file.to_string()),
            Some(_) => (Action::Configured, free_name(id, &kept, &changes)),
            None => (Action::Created, free_name(id, &kept, &changes)),
        };
        if action != Action::Unchanged {
            changes.insert(file.clone(), Some(text));
        }
        applied.push(Applied {
            kind: id.kind.clone(),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            action,
            file,
        });
    }
    Ok(Plan { changes, applied })
}

/// The file a resource moved out of a shared file is written to: its own name, unless a
/// file of that name still holds something else.
fn free_name(id: &ObjectId, kept: &Files, changes: &BTreeMap<String, Option<String>>) -> String {
    let base = id.file_name();
    let stem = base.trim_end_matches(".yaml");
    std::iter::once(base.clone())
        .chain((2..).map(|n| format!("{stem}-{n}.yaml")))
        .find(|name| !kept.contains_key(name) && !matches!(changes.get(name), Some(Some(_))))
        .unwrap_or(base)
}

/// Validates `files` without `id` and works out what to write.
pub fn delete(
    files: &Files,
    id: &ObjectId,
    default_policy: DefaultPolicy,
    stored_path: &dyn Fn(&str) -> PathBuf,
) -> Result<(Plan, String), DeleteError> {
    let stored = Stored::new(files);
    let Some((file, _)) = stored.find(id) else {
        return Err(DeleteError::NotFound);
    };
    let file = file.to_string();
    let (kept, changes) = stored.without(&BTreeSet::from([id.clone()]));
    let sources: Vec<(PathBuf, String)> = kept
        .iter()
        .map(|(name, text)| (stored_path(name), text.clone()))
        .collect();
    compile(&sources, default_policy).map_err(DeleteError::Invalid)?;
    Ok((
        Plan {
            changes,
            applied: Vec::new(),
        },
        file,
    ))
}

/// Every resource stored, with its file and text, in file order.
pub fn list(files: &Files) -> Vec<(ObjectId, String, String)> {
    files
        .iter()
        .flat_map(|(name, text)| {
            docs::split(text)
                .into_iter()
                .filter_map(move |d| Some((d.id?, name.clone(), body(&d.text))))
        })
        .collect()
}
