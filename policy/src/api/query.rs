//! Query strings of API requests.

/// A parsed query string (`a=b&c=d`, percent-decoded).
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(q: &str) -> Self {
        Self(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-decodes a query key or value (`+` is a space). Public (through `api::fuzzing`)
/// for the fuzz targets.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                // Two hex digits exactly (`from_str_radix` alone also takes `+5`).
                let hex = Some(&b[i + 1..i + 3])
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let q = Query::parse(
            "service=api&namespace=default&identity=spiffe%3A%2F%2Fweft.local%2Fns%2Fa%2Fsa%2Fb&x",
        );
        assert_eq!(q.get("service"), Some("api"));
        assert_eq!(q.get("identity"), Some("spiffe://weft.local/ns/a/sa/b"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(decode(&encode("spiffe://a b/%")), "spiffe://a b/%");
        assert_eq!(decode("%4"), "%4");
        // Two hex digits, nothing else: `%+5` is not byte 5.
        assert_eq!(decode("%+5x"), "% 5x");
        assert_eq!(decode("%2b"), "+");
    }
}
