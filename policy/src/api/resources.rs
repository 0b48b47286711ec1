//! `/v1/resources`: the resources as stored (`GET`), applied (`POST`, an
//! [`ApplyRequest`]) and deleted (`DELETE ?kind=K&namespace=N&name=X`). Any mesh identity may
//! read them (the proxies are served their compiled form anyway); only operators may change
//! them: the identities the `MeshConfig` names in `spec.operators`, and the bootstrap operator
//! `spiffe://<trust-domain>/ns/weft-system/sa/operator`.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use weft_identity::SpiffeId;

use super::query::Query;
use super::{Api, ApiBody, Auth, BoxError, Failure, fail, full};
use crate::load::render_errors;
use crate::manage::{
    ApplyRequest, MAX_APPLY_BODY, ManageError, OPERATOR_NAMESPACE, OPERATOR_WORKLOAD, ObjectId,
    StoreError, kind_named,
};
use crate::resources::{DEFAULT_NAMESPACE, KINDS};

impl Api {
    /// Answers a request on `/v1/resources`.
    pub(super) async fn resources<B>(
        &self,
        req: Request<B>,
        query: &Query,
        peer: Option<&SpiffeId>,
    ) -> Result<Response<ApiBody>, Failure>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let Some(manage) = self.manage.as_ref() else {
            return Err(fail(
                StatusCode::NOT_FOUND,
                "not_served",
                "this control plane does not serve its resources",
            ));
        };
        let answer = match *req.method() {
            Method::GET => {
                let kind = query.get("kind").map(known_kind).transpose()?;
                let listed = manage
                    .list(kind, query.get("namespace"), query.get("name"))
                    .await;
                listed.map(|l| serde_json::to_vec(&l))
            }
            Method::POST => {
                let by = self.operator(peer)?;
                let body = match Limited::new(req.into_body(), MAX_APPLY_BODY)
                    .collect()
                    .await
                {
                    Ok(c) => c.to_bytes(),
                    Err(e) => {
                        return Err(fail(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "bad_body",
                            format!(
                                "cannot read the body (at most {MAX_APPLY_BODY} bytes: apply large sets in parts): {e}"
                            ),
                        ));
                    }
                };
                let apply: ApplyRequest = serde_json::from_slice(&body).map_err(|e| {
                    fail(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("the body must be an apply request (JSON): {e}"),
                    )
                })?;
                let done = manage.apply(apply, &by).await;
                if let Ok(d) = &done {
                    tracing::info!(by = %by, revision = %d.revision, dry_run = d.dry_run, applied = d.applied.len(), "resources applied");
                }
                done.map(|d| serde_json::to_vec(&d))
            }
            Method::DELETE => {
                let by = self.operator(peer)?;
                let required = |key: &str| {
                    query.get(key).ok_or_else(|| {
                        fail(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("give the resource: ?kind=<kind>&namespace=<ns>&name=<name> (`{key}` is missing)"),
                        )
                    })
                };
                let id = ObjectId {
                    kind: known_kind(required("kind")?)?.to_string(),
                    namespace: query
                        .get("namespace")
                        .unwrap_or(DEFAULT_NAMESPACE)
                        .to_string(),
                    name: required("name")?.to_string(),
                };
                let done = manage.delete(&id, query.get("revision"), &by).await;
                if let Ok(d) = &done {
                    tracing::info!(by = %by, revision = %d.revision, resource = %id, "resource deleted");
                }
                done.map(|d| serde_json::to_vec(&d))
            }
            _ => {
                return Err(fail(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "/v1/resources takes GET, POST and DELETE",
                ));
            }
        };
        match answer {
            Ok(json) => Ok(full(
                StatusCode::OK,
                "application/json",
                json.unwrap_or_default(),
            )),
            Err(e) => Err(manage_failure(e)),
        }
    }

    /// Who asks, if they may change the resources.
    fn operator(&self, peer: Option<&SpiffeId>) -> Result<String, Failure> {
        match (&self.auth, peer) {
            (Auth::InsecureDev, _) => {
                tracing::warn!(
                    "INSECURE development mode: a change of the resources accepted without mTLS, from anyone"
                );
                Ok("anyone (insecure development mode)".into())
            }
            (Auth::Mtls(_), None) => Err(fail(
                StatusCode::UNAUTHORIZED,
                "client_cert_required",
                "present an operator's mesh certificate (mTLS)",
            )),
            (Auth::Mtls(_), Some(id)) => {
                let bootstrap =
                    id.namespace() == OPERATOR_NAMESPACE && id.workload() == OPERATOR_WORKLOAD;
                if bootstrap || self.store.current().config.operators.contains(id) {
                    Ok(id.to_string())
                } else {
                    Err(fail(
                        StatusCode::FORBIDDEN,
                        "not_an_operator",
                        format!(
                            "{id} may not change the resources: only the identities the MeshConfig names in spec.operators may, and the bootstrap operator spiffe://{}/ns/{OPERATOR_NAMESPACE}/sa/{OPERATOR_WORKLOAD}",
                            id.trust_domain()
                        ),
                    ))
                }
            }
        }
    }
}

/// The kind a query names, or the error that lists the kinds.
fn known_kind(given: &str) -> Result<&'static str, Failure> {
    kind_named(given).ok_or_else(|| {
        fail(
            StatusCode::BAD_REQUEST,
            "unknown_kind",
            format!("unknown kind `{given}`: use one of {}", KINDS.join(", ")),
        )
    })
}

fn manage_failure(e: ManageError) -> Failure {
    match e {
        ManageError::Invalid(errors) => fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!(
                "the resources would be invalid, nothing was changed:\n{}",
                render_errors(&errors).trim_end()
            ),
        ),
        ManageError::Bad(message) => fail(StatusCode::BAD_REQUEST, "bad_request", message),
        ManageError::NotFound(message) => fail(StatusCode::NOT_FOUND, "not_found", message),
        ManageError::Stale { given, now } => fail(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "the resources are at revision {now}, not {given}: nothing was changed; get them again and retry"
            ),
        ),
        ManageError::Store(e @ StoreError::Conflict { .. }) => {
            fail(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        ManageError::Store(e @ StoreError::Unavailable { maybe_written, .. }) => {
            let outcome = if maybe_written {
                "the change was sent but not confirmed: `weft get` tells whether it was made"
            } else {
                "nothing was changed; try again once it is back"
            };
            fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("{e}: {outcome}"),
            )
        }
        ManageError::Store(e @ StoreError::Refused(_)) => {
            fail(StatusCode::BAD_REQUEST, "refused", e.to_string())
        }
    }
}
