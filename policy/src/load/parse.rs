//! Reading a resource directory and parsing its documents: the YAML files of a directory, each
//! document checked against its kind's shape (a failure names the field) and sorted by kind into
//! [`Parsed`], with the [`Origin`] every later error points back to.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::ValidationError;
use crate::resources::{
    AuthorizationPolicySpec, Document, HttpRouteSpec, KINDS, MeshConfigSpec, ServerSpec,
    ServiceSpec,
};
use crate::wire::fnv1a;

/// The YAML files of a directory (`*.yaml`, `*.yml`, recursively, hidden entries skipped),
/// sorted, with their contents.
pub fn read_sources(dir: &Path) -> Result<Vec<(PathBuf, String)>, ValidationError> {
    let io_err = |path: &Path, e: std::io::Error| ValidationError {
        file: path.to_path_buf(),
        document: None,
        resource: None,
        field: String::new(),
        message: format!("cannot read: {e}"),
    };
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| io_err(&d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&d, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
            if ft.is_dir() || (ft.is_symlink() && path.is_dir()) {
                pending.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| match std::fs::read_to_string(&p) {
            Ok(text) => Ok((p, text)),
            Err(e) => Err(io_err(&p, e)),
        })
        .collect()
}

/// The content hash of a set of sources.
pub fn sources_hash(sources: &[(PathBuf, String)]) -> String {
    let mut all = Vec::new();
    for (p, text) in sources {
        all.extend_from_slice(p.to_string_lossy().as_bytes());
        all.push(0);
        all.extend_from_slice(text.as_bytes());
        all.push(0);
    }
    format!("{:016x}", fnv1a(&all))
}

/// Where a resource was written.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub(super) file: PathBuf,
    /// 1-based index of the document in the file.
    pub(super) document: usize,
    /// `Kind namespace/name`.
    pub(super) resource: String,
}

impl Origin {
    pub(super) fn error(
        &self,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ValidationError {
        ValidationError {
            file: self.file.clone(),
            document: Some(self.document),
            resource: Some(self.resource.clone()),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The well-formed documents of a directory, by kind, in the order of the files.
#[derive(Default)]
pub(super) struct Parsed {
    pub(super) services: Vec<(Origin, Document<ServiceSpec>)>,
    pub(super) servers: Vec<(Origin, Document<ServerSpec>)>,
    pub(super) policies: Vec<(Origin, Document<AuthorizationPolicySpec>)>,
    pub(super) routes: Vec<(Origin, Document<HttpRouteSpec>)>,
    pub(super) mesh: Vec<(Origin, Document<MeshConfigSpec>)>,
    /// Non-empty YAML documents, valid resources or not.
    pub(super) documents: usize,
}

/// Parses every document of one file into `out`; what is wrong goes to `errors`.
pub(super) fn parse_file(
    file: &Path,
    text: &str,
    out: &mut Parsed,
    errors: &mut Vec<ValidationError>,
) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let located = |field: &str, message: String| ValidationError {
            file: file.to_path_buf(),
            document: Some(document),
            resource: None,
            field: field.to_string(),
            message,
        };
        let value = match serde_yaml_ng::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(located("", format!("not valid YAML: {e}")));
                // The parser cannot resynchronise after a syntax error.
                return;
            }
        };
        if value.is_null() {
            continue; // An empty document (`---` at the end of a file).
        }
        out.documents += 1;
        let Some(kind) = value
            .get("kind")
            .and_then(|k| k.as_str())
            .map(str::to_string)
        else {
            errors.push(located(
                "kind",
                format!(
                    "missing: every document needs `kind:` (one of {})",
                    KINDS.join(", ")
                ),
            ));
            continue;
        };
        let meta = value.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("?");
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or(crate::resources::DEFAULT_NAMESPACE);
        let origin = Origin {
            file: file.to_path_buf(),
            document,
            resource: format!("{kind} {ns}/{name}"),
        };
        match kind.as_str() {
            "Service" => push(&origin, value, &mut out.services, errors),
            "Server" => push(&origin, value, &mut out.servers, errors),
            "AuthorizationPolicy" => push(&origin, value, &mut out.policies, errors),
            "HTTPRoute" => push(&origin, value, &mut out.routes, errors),
            "MeshConfig" => push(&origin, value, &mut out.mesh, errors),
            other => errors.push(origin.error(
                "kind",
                format!("unknown kind `{other}`: use one of {}", KINDS.join(", ")),
            )),
        }
    }
}

fn push<S: DeserializeOwned>(
    origin: &Origin,
    value: serde_yaml_ng::Value,
    out: &mut Vec<(Origin, Document<S>)>,
    errors: &mut Vec<ValidationError>,
) {
    match serde_path_to_error::deserialize::<_, Document<S>>(value) {
        Ok(doc) => {
            if let Err((field, msg)) = check_metadata(&doc.metadata) {
                errors.push(origin.error(field, msg));
            } else {
                out.push((origin.clone(), doc));
            }
        }
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            errors.push(origin.error(field, e.into_inner().to_string()));
        }
    }
}

fn check_metadata(m: &crate::resources::Metadata) -> Result<(), (&'static str, String)> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
    };
    for (field, what, value) in [
        ("metadata.name", "name", &m.name),
        ("metadata.namespace", "namespace", &m.namespace),
    ] {
        if !ok(value) {
            return Err((
                field,
                format!(
                    "`{value}` is not a valid {what}: use lowercase letters, digits, `-` and `.`"
                ),
            ));
        }
    }
    Ok(())
}
