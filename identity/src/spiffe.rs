//! SPIFFE IDs as weft uses them: `spiffe://<trust-domain>/ns/<namespace>/sa/<workload>`.
//!
//! Parsing follows the SPIFFE ID spec (lowercase trust domain of `[a-z0-9.-_]`, path segments of
//! `[A-Za-z0-9.-_]`, no empty, `.` or `..` segments, no query or fragment), narrowed to the
//! two-segment-pair shape every weft identity has, so a workload identity is always a namespace
//! and a name.

use std::fmt;
use std::str::FromStr;

/// The trust domain weft uses when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "weft.local";

/// Why a string is not a weft SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID starts with `spiffe://`")]
    Scheme,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain may only hold lowercase letters, digits, `.`, `-` and `_`")]
    TrustDomainChars,
    #[error("a weft identity has the path `/ns/<namespace>/sa/<workload>`")]
    Path,
    #[error("`{0}` is not a valid name: use letters, digits, `.`, `-` and `_` (not `.` or `..`)")]
    Segment(String),
    #[error("a SPIFFE ID is at most 2048 bytes long")]
    TooLong,
}

/// A trust domain: the first part of every SPIFFE ID weft issues.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(SpiffeIdError::TrustDomainChars);
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identity of `workload` in `namespace` in this trust domain.
    pub fn workload(&self, namespace: &str, workload: &str) -> Result<SpiffeId, SpiffeIdError> {
        check_segment(namespace)?;
        check_segment(workload)?;
        Ok(SpiffeId {
            uri: format!("spiffe://{}/ns/{namespace}/sa/{workload}", self.0),
            td_len: self.0.len(),
            ns_len: namespace.len(),
        })
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.to_string())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A validated weft SPIFFE ID. Cheap to compare; displays as the URI.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    td_len: usize,
    ns_len: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > 2048 {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = rest.split_once('/').ok_or(SpiffeIdError::Path)?;
        let td = TrustDomain::new(td)?;
        let mut parts = path.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => td.workload(ns, sa),
            _ => Err(SpiffeIdError::Path),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    pub fn namespace(&self) -> &str {
        let start = SCHEME.len() + self.td_len + "/ns/".len();
        &self.uri[start..start + self.ns_len]
    }

    pub fn workload(&self) -> &str {
        let start = SCHEME.len() + self.td_len + "/ns/".len() + self.ns_len + "/sa/".len();
        &self.uri[start..]
    }
}

fn check_segment(s: &str) -> Result<(), SpiffeIdError> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::Segment(s.to_string()))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id = SpiffeId::parse("spiffe://weft.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "weft.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.workload(), "web");
        assert_eq!(id.to_string(), "spiffe://weft.local/ns/default/sa/web");
        let built = TrustDomain::default().workload("default", "web").unwrap();
        assert_eq!(built, id);
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "http://weft.local/ns/a/sa/b",
            "spiffe://",
            "spiffe:///ns/a/sa/b",
            "spiffe://Weft.local/ns/a/sa/b",
            "spiffe://weft.local",
            "spiffe://weft.local/",
            "spiffe://weft.local/ns/a",
            "spiffe://weft.local/ns/a/sa/",
            "spiffe://weft.local/ns/a/sa/b/c",
            "spiffe://weft.local/ns/../sa/b",
            "spiffe://weft.local/ns/a/sa/b?x=1",
            "spiffe://weft.local/ns/a b/sa/c",
            "spiffe://weft.local/xx/a/sa/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
