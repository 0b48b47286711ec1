//! `weft apply`, `get` and `delete`'s side of the client: the resources as stored, applied
//! and deleted through `/v1/resources`.

use bytes::Bytes;
use http::Method;
use serde::de::DeserializeOwned;

use super::{ClientError, PolicyClient, rejected};
use crate::api::encode;
use crate::manage::{ApplyRequest, ApplyResponse, Deleted, Listed, RESOURCES_PATH};

impl PolicyClient {
    /// The stored resources (`kind`, `namespace`, `name`: `None` for all).
    pub async fn list_resources(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Listed, ClientError> {
        let query: Vec<String> = [("kind", kind), ("namespace", namespace), ("name", name)]
            .into_iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", encode(v?))))
            .collect();
        let path = format!("{RESOURCES_PATH}?{}", query.join("&"));
        self.call(Method::GET, &path, Bytes::new()).await
    }

    /// Applies resources (an operator's identity is needed).
    pub async fn apply(&self, req: &ApplyRequest) -> Result<ApplyResponse, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(Method::POST, RESOURCES_PATH, Bytes::from(body))
            .await
    }

    /// Deletes a resource (an operator's identity is needed), if the resources are at
    /// `revision` when one is given.
    pub async fn delete_resource(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        revision: Option<&str>,
    ) -> Result<Deleted, ClientError> {
        let mut path = format!(
            "{RESOURCES_PATH}?kind={}&namespace={}&name={}",
            encode(kind),
            encode(namespace),
            encode(name)
        );
        if let Some(r) = revision {
            path.push_str(&format!("&revision={}", encode(r)));
        }
        self.call(Method::DELETE, &path, Bytes::new()).await
    }

    /// One request whose successful answer is JSON.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let (status, body) = self.inner.request(method, path, body).await?;
        if !status.is_success() {
            return Err(rejected(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }
}
