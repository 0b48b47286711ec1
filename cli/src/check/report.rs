//! What `weft check` found, and how it is shown: groups of check lines marked √ / ‼ / × as
//! `linkerd check` marks them, each failure or warning with what went wrong and a `fix:`.

use serde::Serialize;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Failure,
}

impl Status {
    pub fn symbol(self) -> &'static str {
        match self {
            Status::Ok => "√",
            Status::Warning => "‼",
            Status::Failure => "×",
        }
    }
}

/// One check line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub status: Status,
    /// What was checked, phrased as what should hold ("control plane is ready").
    pub description: String,
    /// What was found instead, when it did not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What to do about it: a command, flag or environment variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(description: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            description: description.into(),
            detail: None,
            fix: None,
        }
    }

    pub fn warning(
        description: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Warning,
            description: description.into(),
            detail: Some(detail.into()),
            fix: Some(fix.into()),
        }
    }

    pub fn failure(
        description: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Failure,
            description: description.into(),
            detail: Some(detail.into()),
            fix: Some(fix.into()),
        }
    }
}

/// The checks of one component or concern.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub name: String,
    pub checks: Vec<Check>,
}

/// Every group, and the tally `-o json` readers want.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub groups: Vec<Group>,
    pub failures: usize,
    pub warnings: usize,
    /// No failures (warnings allowed): what the exit code says.
    pub healthy: bool,
}

impl Report {
    pub fn new(groups: Vec<Group>) -> Self {
        let count = |s: Status| {
            groups
                .iter()
                .flat_map(|g| &g.checks)
                .filter(|c| c.status == s)
                .count()
        };
        let (failures, warnings) = (count(Status::Failure), count(Status::Warning));
        Self {
            groups,
            failures,
            warnings,
            healthy: failures == 0,
        }
    }

    /// The terminal form: a dashed heading per group, one line per check, indented detail and
    /// fix lines, and the summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for g in &self.groups {
            out.push_str(&format!(
                "{}\n{}\n",
                g.name,
                "-".repeat(g.name.chars().count())
            ));
            for c in &g.checks {
                out.push_str(&format!("{} {}\n", c.status.symbol(), c.description));
                if let Some(d) = &c.detail {
                    out.push_str(&format!("    {d}\n"));
                }
                if let Some(f) = &c.fix {
                    out.push_str(&format!("    fix: {f}\n"));
                }
            }
            out.push('\n');
        }
        out.push_str(&self.summary());
        out
    }

    /// The last line: `Status check results are √` (with the warnings counted, if any), or how
    /// many checks failed.
    pub fn summary(&self) -> String {
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        match (self.failures, self.warnings) {
            (0, 0) => "Status check results are √".into(),
            (0, w) => format!("Status check results are √ ({})", plural(w, "warning")),
            (f, _) => format!("Status check results are ×: {} failed", plural(f, "check")),
        }
    }
}
