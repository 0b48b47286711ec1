//! The Prometheus text exposition format, read back: every sample of a scrape with its name,
//! labels and value (comments and timestamps skipped).

use std::collections::BTreeMap;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every sample of `text`; a malformed line is an error naming it.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| line(l).ok_or_else(|| format!("not a Prometheus sample: `{l}`")))
        .collect()
}

fn line(l: &str) -> Option<Sample> {
    let name_end = l.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = l[..name_end].to_string();
    let mut rest = &l[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_string();
            let r = rest[eq + 1..].strip_prefix('"')?;
            let (value, r) = quoted(r)?;
            labels.insert(key, value);
            rest = r;
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A label value up to its closing quote (escapes `\\`, `\"`, `\n`), and what follows.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_labels_escapes_and_infinities() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total{a=\"1\",b=\"q\\\"uote\\\\d\"} 42\n\
                    y 0.5 1700000000\n\
                    h_bucket{le=\"+Inf\"} 7\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].label("b"), "q\"uote\\d");
        assert_eq!(s[0].value, 42.0);
        assert_eq!((s[1].name.as_str(), s[1].value), ("y", 0.5));
        assert_eq!(s[2].label("le"), "+Inf");
        assert!(parse("x{a=\"1\" 2").is_err());
    }
}
