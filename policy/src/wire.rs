//! Small value types shared by the YAML resources and the API's JSON: durations written as
//! `500ms`/`2s`, compiled regular expressions that serialize as their source, path and header
//! matchers, and the watch event envelope.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way operators write one: `500ms`, `2s`, `1m30s` (or a plain number
/// of seconds). Serializes back to the same notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Dur(Duration::from_secs(s))),
            Raw::Text(t) => weft_runtime::config::parse_duration(&t)
                .map(Dur)
                .map_err(|e| serde::de::Error::custom(format!("bad duration: {e}"))),
        }
    }
}

/// `2s`, `500ms`, or fractional seconds below a millisecond; parsed back by `parse_duration`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// A regular expression that must match the whole value (it is anchored as `^(?:re)$`).
/// Serializes as the source the operator wrote.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    re: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, String> {
        let re = regex::Regex::new(&format!("^(?:{source})$"))
            .map_err(|e| format!("regular expression `{source}` does not compile: {e}"))?;
        Ok(Self {
            source: source.to_string(),
            re,
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// How a request path is matched (Gateway API `HTTPPathMatch`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PathMatchSpec", into = "PathMatchSpec")]
pub enum PathMatch {
    Exact(String),
    /// Matches whole path segments: `/v1` matches `/v1` and `/v1/x`, not `/v1x`.
    Prefix(String),
    Regex(Pattern),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

/// The written form of a [`PathMatch`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatchSpec {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    #[serde(default = "slash")]
    pub value: String,
}

fn slash() -> String {
    "/".to_string()
}

impl TryFrom<PathMatchSpec> for PathMatch {
    type Error = String;
    fn try_from(spec: PathMatchSpec) -> Result<Self, String> {
        match spec.kind {
            PathMatchType::RegularExpression => Pattern::new(&spec.value).map(PathMatch::Regex),
            _ if !spec.value.starts_with('/') => {
                Err(format!("path `{}` must start with `/`", spec.value))
            }
            PathMatchType::Exact => Ok(PathMatch::Exact(spec.value)),
            PathMatchType::PathPrefix => Ok(PathMatch::Prefix(spec.value)),
        }
    }
}

impl From<PathMatch> for PathMatchSpec {
    fn from(m: PathMatch) -> Self {
        let (kind, value) = match m {
            PathMatch::Exact(v) => (PathMatchType::Exact, v),
            PathMatch::Prefix(v) => (PathMatchType::PathPrefix, v),
            PathMatch::Regex(p) => (PathMatchType::RegularExpression, p.source),
        };
        Self { kind, value }
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/')
                        || path.len() == p.len()
                        || path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatch::Regex(re) => re.is_match(path),
        }
    }

    /// Gateway API precedence: exact beats prefix (longer first) beats regex.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Prefix(p) => (2, p.len()),
            PathMatch::Regex(_) => (1, 0),
        }
    }
}

/// How a header value is matched (Gateway API `HTTPHeaderMatch`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HeaderMatchSpec", into = "HeaderMatchSpec")]
pub struct HeaderMatch {
    /// Lowercase header name.
    pub name: http::HeaderName,
    pub value: StringMatch,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StringMatch {
    Exact(String),
    Regex(Pattern),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum StringMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// The written form of a [`HeaderMatch`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSpec {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    pub value: String,
}

impl TryFrom<HeaderMatchSpec> for HeaderMatch {
    type Error = String;
    fn try_from(spec: HeaderMatchSpec) -> Result<Self, String> {
        let name = http::HeaderName::from_bytes(spec.name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("`{}` is not a valid header name", spec.name))?;
        let value = match spec.kind {
            StringMatchType::Exact => StringMatch::Exact(spec.value),
            StringMatchType::RegularExpression => StringMatch::Regex(Pattern::new(&spec.value)?),
        };
        Ok(Self { name, value })
    }
}

impl From<HeaderMatch> for HeaderMatchSpec {
    fn from(m: HeaderMatch) -> Self {
        let (kind, value) = match m.value {
            StringMatch::Exact(v) => (StringMatchType::Exact, v),
            StringMatch::Regex(p) => (StringMatchType::RegularExpression, p.source),
        };
        Self {
            name: m.name.as_str().to_string(),
            kind,
            value,
        }
    }
}

impl HeaderMatch {
    pub fn matches(&self, headers: &http::HeaderMap) -> bool {
        headers
            .get_all(&self.name)
            .iter()
            .any(|v| match (&self.value, v.to_str()) {
                (StringMatch::Exact(want), Ok(v)) => v == want,
                (StringMatch::Regex(re), Ok(v)) => re.is_match(v),
                (_, Err(_)) => false,
            })
    }
}

/// An HTTP method as written in resources: an uppercase token (`GET`, `POST`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Method(pub http::Method);

impl TryFrom<String> for Method {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(format!(
                "`{s}` is not an HTTP method: write it in uppercase, e.g. GET"
            ));
        }
        http::Method::from_bytes(s.as_bytes())
            .map(Method)
            .map_err(|_| format!("`{s}` is not an HTTP method"))
    }
}

impl From<Method> for String {
    fn from(m: Method) -> String {
        m.0.as_str().to_string()
    }
}

/// One line of a watch stream (newline-delimited JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Event<T> {
    /// The whole current state of the watched item.
    Snapshot {
        version: String,
        revision: u64,
        item: T,
    },
    /// Sent first when a client resumed with the version it already holds.
    Unchanged { version: String, revision: u64 },
    /// Keeps idle streams alive; clients treat a silent stream as dead.
    Heartbeat,
}

/// FNV-1a 64: a stable content hash (the same across processes and builds), used for item
/// versions and to notice changed files.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for d in [
            Duration::from_secs(2),
            Duration::from_millis(500),
            Duration::from_micros(250),
        ] {
            let s = format_duration(d);
            assert_eq!(weft_runtime::config::parse_duration(&s).unwrap(), d, "{s}");
        }
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let p = PathMatch::Prefix("/v1".into());
        assert!(p.matches("/v1"));
        assert!(p.matches("/v1/users"));
        assert!(!p.matches("/v1x"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
        assert!(PathMatch::Prefix("/v1/".into()).matches("/v1/a"));
    }

    #[test]
    fn patterns_are_anchored() {
        let p = Pattern::new(".*[Mm]obile.*").unwrap();
        assert!(p.is_match("Mozilla Mobile Safari"));
        let q = Pattern::new("/users/[0-9]+").unwrap();
        assert!(q.is_match("/users/42"));
        assert!(!q.is_match("/users/42/posts"));
    }
}
