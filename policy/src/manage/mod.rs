//! Changing the resources through the control plane (`weft apply`, `weft get`, `weft delete`),
//! the same way over both stores: the whole new set is validated as the loader validates a
//! directory, and written at once on condition that nothing changed since it was read.
//!
//! # Layout
//! - this module: the API's messages and [`Manage`], which reads, plans and writes;
//! - `docs`: a file's YAML documents, each kept as written;
//! - `plan`: the files an apply or a delete writes, and the validation of the set they make;
//! - `backend`: reading the files of a directory or of etcd, and the compare-and-swap write.

pub mod backend;
pub mod docs;
pub mod plan;

use serde::{Deserialize, Serialize};

pub use self::backend::{Backend, Snapshot, StoreError};
pub use self::docs::ObjectId;
pub use self::plan::{Action, Applied, DeleteError};
use crate::authz::DefaultPolicy;
use crate::load::ValidationError;
use crate::resources::KINDS;

/// The API path of the resources: `GET` lists, `POST` applies, `DELETE` deletes.
pub const RESOURCES_PATH: &str = "/v1/resources";
/// The largest apply taken (etcd's default request limit is 1.5 MiB).
pub const MAX_APPLY_BODY: usize = 1 << 20;
/// The bootstrap operator: `spiffe://<trust-domain>/ns/weft-system/sa/operator` may always
/// change the resources. Only who holds the CA's files can mint its token
/// (`weft token create --namespace weft-system --workload operator`), and they could mint any
/// operator's anyway.
pub const OPERATOR_NAMESPACE: &str = "weft-system";
pub const OPERATOR_WORKLOAD: &str = "operator";

/// One file of an apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputFile {
    /// The name the operator knows it by (errors name it).
    pub name: String,
    pub yaml: String,
}

/// `POST /v1/resources`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    pub files: Vec<InputFile>,
    /// Apply only if the resources are still at this revision (as `weft get` printed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Validate and say what would change, without writing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to an apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// The resources' revision after the apply.
    pub revision: String,
    pub applied: Vec<Applied>,
    #[serde(default)]
    pub dry_run: bool,
}

/// One stored resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The file (or key, under the store's prefix) that holds it.
    pub file: String,
    /// Its YAML as written.
    pub yaml: String,
}

/// The answer to `GET /v1/resources`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    pub revision: String,
    pub items: Vec<Item>,
}

/// The answer to a delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub revision: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub file: String,
}

/// The kind a user means: its name in any case, its plural, or a short name.
pub fn kind_named(given: &str) -> Option<&'static str> {
    let lower = given.to_ascii_lowercase();
    let short = match lower.as_str() {
        "svc" => Some("Service"),
        "srv" => Some("Server"),
        "authz" | "authorizationpolicies" => Some("AuthorizationPolicy"),
        "route" | "routes" => Some("HTTPRoute"),
        _ => None,
    };
    short.or_else(|| {
        KINDS.iter().copied().find(|k| {
            let k = k.to_ascii_lowercase();
            lower == k || lower.strip_suffix('s') == Some(k.as_str())
        })
    })
}

/// Why a change was not made.
#[derive(Debug)]
pub enum ManageError {
    /// The set it would make is invalid: nothing was written.
    Invalid(Vec<ValidationError>),
    /// The request itself is unusable.
    Bad(String),
    NotFound(String),
    /// The resources are not at the revision the request names.
    Stale {
        given: String,
        now: String,
    },
    Store(StoreError),
}

impl From<StoreError> for ManageError {
    fn from(e: StoreError) -> Self {
        ManageError::Store(e)
    }
}

/// Reads, validates and writes the resources of one store.
#[derive(Debug, Clone)]
pub struct Manage {
    pub backend: Backend,
    /// The inbound policy of ports nothing covers, unless a `MeshConfig` sets one: what the
    /// served set is validated with.
    pub default_policy: DefaultPolicy,
}

impl Manage {
    /// Applies `req` for `by` (who asked, recorded in etcd).
    pub async fn apply(&self, req: ApplyRequest, by: &str) -> Result<ApplyResponse, ManageError> {
        if req.files.is_empty() {
            return Err(ManageError::Bad("no file to apply".into()));
        }
        let read = self.read(req.revision.as_deref()).await?;
        let inputs: Vec<(String, String)> =
            req.files.into_iter().map(|f| (f.name, f.yaml)).collect();
        let path = |name: &str| self.backend.path_of(name);
        let plan = plan::apply(&read.files, &inputs, self.default_policy, &path)
            .map_err(ManageError::Invalid)?;
        if plan.applied.is_empty() {
            let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(ManageError::Bad(format!(
                "no resource to apply in {}",
                names.join(", ")
            )));
        }
        let revision = if req.dry_run || plan.changes.is_empty() {
            read.revision
        } else {
            self.backend.write(&read, &plan.changes, by).await?
        };
        Ok(ApplyResponse {
            revision,
            applied: plan.applied,
            dry_run: req.dry_run,
        })
    }

    /// The stored resources of `kind` (every kind if `None`), in `namespace` (every one if
    /// `None`), named `name` (every name if `None`).
    pub async fn list(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Listed, ManageError> {
        let read = self.backend.read().await?;
        let items = plan::list(&read.files)
            .into_iter()
            .filter(|(id, _, _)| {
                kind.is_none_or(|k| k == id.kind)
                    && namespace.is_none_or(|n| n == id.namespace)
                    && name.is_none_or(|n| n == id.name)
            })
            .map(|(id, file, yaml)| Item {
                kind: id.kind,
                namespace: id.namespace,
                name: id.name,
                file,
                yaml,
            })
            .collect();
        Ok(Listed {
            revision: read.revision,
            items,
        })
    }

    /// Deletes `id`, if the set without it is valid.
    pub async fn delete(
        &self,
        id: &ObjectId,
        revision: Option<&str>,
        by: &str,
    ) -> Result<Deleted, ManageError> {
        let read = self.read(revision).await?;
        let path = |name: &str| self.backend.path_of(name);
        let (plan, file) =
            plan::delete(&read.files, id, self.default_policy, &path).map_err(|e| match e {
                DeleteError::NotFound => ManageError::NotFound(format!(
                    "there is no {id} in {}",
                    self.backend.describe()
                )),
                DeleteError::Invalid(errors) => ManageError::Invalid(errors),
            })?;
        let revision = self.backend.write(&read, &plan.changes, by).await?;
        Ok(Deleted {
            revision,
            kind: id.kind.clone(),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            file,
        })
    }

    /// The files, if they are at `revision` when one is given.
    async fn read(&self, revision: Option<&str>) -> Result<Snapshot, ManageError> {
        let read = self.backend.read().await?;
        match revision {
            Some(given) if given != read.revision => Err(ManageError::Stale {
                given: given.to_string(),
                now: read.revision,
            }),
            _ => Ok(read),
        }
    }
}

#[cfg(test)]
mod tests;
