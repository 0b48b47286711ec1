//! What the soak reports: the JSON (everything, samples included), the Markdown summary, the
//! plot of every process's memory over time, and the verdict that makes `weft-bench soak`
//! exit non-zero.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::Error;
use crate::load::{Episode, RunResult};
use crate::mesh::write_file;
use crate::plot::{self, Band, Line};
use crate::report::markdown::{table_header, table_row};
use crate::report::thousands;
use crate::suite::{Machine, Written, free_stem};

use super::churn::Life;
use super::memory::{Memory, Windows};
use super::{CONTROL_PLANE, Log, SECOND_API, Soak, SoakConfig};

/// Something that happened during the soak, in seconds from its start.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub at: f64,
    pub what: String,
}

/// The settings, as reported.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SoakSettings {
    pub rate: u64,
    pub duration_seconds: f64,
    pub connections: usize,
    pub body_size: usize,
    pub rotate_every_seconds: f64,
    /// The identity service's leaf lifetime that makes the clients renew so often.
    pub leaf_lifetime_seconds: f64,
    pub edit_every_seconds: f64,
    pub endpoint_every_seconds: f64,
    pub sample_every_seconds: f64,
    pub max_drift_percent: f64,
    pub cores: usize,
    pub weft: String,
}

/// Certificate renewals during the soak.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Renewals {
    /// Renewals each long-lived client made: the proxies' from their metrics; the control
    /// plane's (it exports no client metrics) derived, the renewals the identity service
    /// issued less every proxy's own count.
    pub by_process: Vec<(String, f64)>,
    /// Renewals the identity service issued (every client's, the second api's included).
    pub issued: Option<f64>,
    /// Renewals the second api instance made over all its lives.
    pub second_api: f64,
    /// The fewest renewals a long-lived client must have made for the rotation to count as
    /// working: one per `rotate_every`, with 15 % of slack.
    pub expected_at_least: u64,
}

/// The soak's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub passed: bool,
    /// Why it did not pass.
    pub reasons: Vec<String>,
}

/// Everything `weft-bench soak` writes to `soak-<date>.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakReport {
    pub bench: &'static str,
    pub date: String,
    pub machine: Machine,
    pub settings: SoakSettings,
    /// The whole run: every request counted.
    pub load: RunResult,
    /// Requests that failed: non-2xx, transport errors, unsent.
    pub failed: u64,
    /// The failed requests, in episodes of failures close together.
    pub failure_episodes: Vec<Episode>,
    pub windows: Windows,
    pub memory: Vec<Memory>,
    /// `(seconds, requests ok, requests failed)` so far, at each sample.
    pub requests_over_time: Vec<(f64, u64, u64)>,
    pub renewals: Renewals,
    /// Edits started, and the seconds each took to show in the control plane's status.
    pub edits_started: usize,
    pub edit_seconds: Vec<f64>,
    pub second_api: Vec<Life>,
    pub events: Vec<Event>,
    /// What went wrong besides failed requests.
    pub problems: Vec<String>,
    pub verdict: Verdict,
}

impl SoakReport {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: &SoakConfig,
        leaf: Duration,
        weft: &Path,
        load: RunResult,
        failure_episodes: Vec<Episode>,
        mut soak: Soak,
        issued: Option<f64>,
        second_api: Vec<Life>,
        log: Log,
    ) -> Self {
        let duration = cfg.duration.as_secs_f64();
        let windows = Windows::of(duration, cfg.warmup.map(|w| w.as_secs_f64()));
        for m in &mut soak.memory {
            m.finish(&windows);
        }
        let expected_at_least = (duration / (cfg.rotate_every.as_secs_f64() * 1.15)) as u64;
        let second_renewals: f64 = second_api.iter().filter_map(|l| l.renewals).sum();
        let mut by_process: Vec<(String, f64)> = soak
            .renewals
            .iter()
            .map(|(n, c)| (n.to_string(), *c))
            .collect();
        if let Some(issued) = issued {
            let proxies: f64 = by_process.iter().map(|(_, c)| c).sum::<f64>() + second_renewals;
            by_process.push((CONTROL_PLANE.to_string(), issued - proxies));
        }
        let mut report = Self {
            bench: "soak",
            date: weft_identity::rfc3339(std::time::SystemTime::now())
                .get(..10)
                .unwrap_or("undated")
                .to_string(),
            machine: Machine::read(),
            settings: SoakSettings {
                rate: cfg.rate,
                duration_seconds: duration,
                connections: cfg.connections,
                body_size: cfg.body_size,
                rotate_every_seconds: cfg.rotate_every.as_secs_f64(),
                leaf_lifetime_seconds: leaf.as_secs_f64(),
                edit_every_seconds: cfg.edit_every.as_secs_f64(),
                endpoint_every_seconds: cfg.endpoint_every.as_secs_f64(),
                sample_every_seconds: cfg.sample_every.as_secs_f64(),
                max_drift_percent: cfg.max_drift_percent,
                cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
                weft: weft.display().to_string(),
            },
            failed: load.errors(),
            load,
            failure_episodes,
            windows,
            memory: soak.memory,
            requests_over_time: soak.requests,
            renewals: Renewals {
                by_process,
                issued,
                second_api: second_renewals,
                expected_at_least,
            },
            edits_started: soak.edits.started(),
            edit_seconds: soak.edits.applied_seconds.clone(),
            second_api,
            events: log.events,
            problems: log.problems,
            verdict: Verdict {
                passed: false,
                reasons: Vec::new(),
            },
        };
        report.verdict = report.judge();
        report
    }

    /// Passed when no request failed, every long-lived process's drift is within the
    /// threshold, every client renewed as often as expected and nothing else went wrong.
    fn judge(&self) -> Verdict {
        let mut reasons = Vec::new();
        let l = &self.load;
        if self.failed > 0 {
            reasons.push(format!(
                "{} requests failed ({} answered non-2xx, {} transport errors, {} unsent)",
                self.failed, l.status_errors, l.transport_errors, l.unsent
            ));
        }
        if l.requests == 0 {
            reasons.push("no request was answered".into());
        }
        let max = self.settings.max_drift_percent;
        for m in self.memory.iter().filter(|m| m.judged) {
            match m.drift_percent {
                Some(d) if d > max => reasons.push(format!(
                    "the {}'s memory drifted {d:+.1} % (more than {max} %)",
                    m.component
                )),
                Some(_) => {}
                None => reasons.push(format!(
                    "the {}'s drift is unknown: no sample in a window compared",
                    m.component
                )),
            }
        }
        if self.renewals.issued.is_none() {
            reasons.push("the identity service's renewals could not be read".into());
        }
        for (name, n) in &self.renewals.by_process {
            if (*n as u64) < self.renewals.expected_at_least {
                reasons.push(format!(
                    "the {name} renewed its certificate {n:.0} times, fewer than the {} \
                     expected",
                    self.renewals.expected_at_least
                ));
            }
        }
        reasons.extend(self.problems.iter().cloned());
        Verdict {
            passed: reasons.is_empty(),
            reasons,
        }
    }

    /// Writes `soak-<date>.json`, `.md` and `.svg` (`-2`, `-3`… when that day's are there
    /// already) into `out_dir`; when the soak did not pass, also the processes' `logs` (file
    /// name, text) into `soak-<date>-logs/`.
    pub fn write(&self, out_dir: &Path, logs: &[(String, String)]) -> Result<Written, Error> {
        std::fs::create_dir_all(out_dir)
            .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
        let stem = free_stem(out_dir, &format!("soak-{}", self.date));
        let written = Written {
            json: out_dir.join(format!("{stem}.json")),
            markdown: out_dir.join(format!("{stem}.md")),
            plot: out_dir.join(format!("{stem}.svg")),
        };
        let json = serde_json::to_string_pretty(self).map_err(|e| format!("JSON: {e}"))?;
        write_file(&written.json, &json)?;
        write_file(&written.plot, &self.plot())?;
        write_file(
            &written.markdown,
            &self.markdown(&format!("{stem}.svg"), &format!("{stem}.json")),
        )?;
        if !self.verdict.passed && !logs.is_empty() {
            let dir = out_dir.join(format!("{stem}-logs"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            for (name, text) in logs {
                write_file(&dir.join(name), text)?;
            }
        }
        Ok(written)
    }

    /// Every process's VmRSS (MiB) over the run (minutes), the windows compared shaded.
    pub fn plot(&self) -> String {
        memory_plot(&self.settings, &self.windows, &self.memory)
    }

    /// The summary, linking the plot `svg` and the JSON `json`.
    pub fn markdown(&self, svg: &str, json: &str) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Soak: {} req/s for {} through the mesh\n\n{}\n\nMachine: {}. All figures: \
             [`{json}`]({json}).\n",
            s.rate,
            minutes(s.duration_seconds),
            if self.verdict.passed {
                "**Passed**: no request failed, every drift within the threshold.".to_string()
            } else {
                format!("**FAILED**: {}.", self.verdict.reasons.join("; "))
            },
            self.machine.line()
        );
        self.write_requests(&mut out);
        self.write_memory(&mut out, svg);
        self.write_churn(&mut out);
        self.write_failures(&mut out);
        out
    }

    fn write_requests(&self, out: &mut String) {
        let l = &self.load;
        let _ = writeln!(out, "## Requests\n");
        table_header(
            out,
            &[
                "requests", "failed", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
            ],
        );
        table_row(
            out,
            &[
                thousands(l.requests as f64),
                thousands(self.failed as f64),
                format!("{:.0}", l.requests_per_second),
                format!("{:.3}", l.p50_ms),
                format!("{:.3}", l.p99_ms),
                format!("{:.3}", l.p999_ms),
                format!("{:.3}", l.max_ms),
            ],
        );
        let _ = writeln!(
            out,
            "\nOpen loop over {} keep-alive connections, HTTP/1.1 `GET /` through web's outbound \
             proxy to `api` (two instances, one coming and going); latency from each request's \
             intended send time, every request of the run counted.\n",
            self.settings.connections
        );
    }

    fn write_memory(&self, out: &mut String, svg: &str) {
        let w = &self.windows;
        let _ = writeln!(
            out,
            "## Memory (VmRSS)\n\n![VmRSS over time]({svg})\n\nSampled every {:.0} s. Drift: \
             the mean over the end window ({}–{}) against the mean over a window as long \
             right after the warm-up ({}–{}); judged against {} % for every process that lives \
             the whole run.\n",
            self.settings.sample_every_seconds,
            minutes(w.end.0),
            minutes(w.end.1),
            minutes(w.baseline.0),
            minutes(w.baseline.1),
            self.settings.max_drift_percent
        );
        table_header(
            out,
            &[
                "process",
                "first MiB",
                "after warm-up MiB",
                "end MiB",
                "last MiB",
                "peak MiB",
                "drift",
            ],
        );
        let mib = |k: Option<f64>| k.map_or("–".into(), |k| format!("{:.1}", k / 1024.0));
        for m in &self.memory {
            let drift = match (m.judged, m.drift_percent) {
                (true, Some(d)) => format!("{d:+.2} %"),
                (true, None) => "unknown".into(),
                (false, _) => "not judged (a new process each life)".into(),
            };
            table_row(
                out,
                &[
                    m.component.clone(),
                    mib(m.first_kib.map(|k| k as f64)),
                    mib(m.baseline_kib),
                    mib(m.end_kib),
                    mib(m.last_kib.map(|k| k as f64)),
                    mib(m.peak_kib.map(|k| k as f64)),
                    drift,
                ],
            );
        }
        out.push('\n');
    }

    fn write_churn(&self, out: &mut String) {
        let s = &self.settings;
        let r = &self.renewals;
        let by: Vec<String> = r
            .by_process
            .iter()
            .map(|(n, c)| format!("{n} {c:.0}"))
            .collect();
        let mut edit_times = self.edit_seconds.clone();
        edit_times.sort_by(f64::total_cmp);
        let median = edit_times.get(edit_times.len() / 2).copied();
        let lives = &self.second_api;
        let served: Vec<f64> = lives.iter().filter_map(|l| l.requests_served).collect();
        let drains: Vec<f64> = lives.iter().filter_map(|l| l.drained_in).collect();
        let range = |v: &[f64], f: fn(f64) -> String| match (
            v.iter().copied().reduce(f64::min),
            v.iter().copied().reduce(f64::max),
        ) {
            (Some(a), Some(b)) => format!("{}–{}", f(a), f(b)),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "## What changed during the run\n\n\
             - **Certificates**: leaf lifetime {:.0} s, so every client renews about every \
             {:.0} s. Renewals: {} (at least {} expected each; the control plane's derived: \
             all the identity service issued, {}, less the proxies' own counts, the second api's \
             {:.0} included).\n\
             - **Resources**: {} edits, api's HTTPRoute and its AuthorizationPolicy in turn, \
             one every {:.0} s; {} showed in the control plane's status (median {}, max {}).\n\
             - **Endpoint**: a second api proxy ({SECOND_API}) up for {:.0} s, then SIGTERM \
             and down for {:.0} s: {} lives, {} stopped; requests each served before its \
             SIGTERM {}; SIGTERM to exit {}.\n",
            s.leaf_lifetime_seconds,
            s.rotate_every_seconds,
            by.join(", "),
            r.expected_at_least,
            r.issued.map_or("?".into(), |n| format!("{n:.0}")),
            r.second_api,
            self.edits_started,
            s.edit_every_seconds,
            self.edit_seconds.len(),
            median.map_or("–".into(), |m| format!("{m:.2} s")),
            edit_times
                .last()
                .map_or("–".into(), |m| format!("{m:.2} s")),
            s.endpoint_every_seconds / 2.0,
            s.endpoint_every_seconds / 2.0,
            lives.len(),
            lives.iter().filter(|l| l.sigterm_at.is_some()).count(),
            range(&served, thousands),
            range(&drains, |v| format!("{v:.2} s")),
        );
    }

    /// The failed requests, episode by episode, each with the events just before it; the
    /// other problems.
    fn write_failures(&self, out: &mut String) {
        if !self.failure_episodes.is_empty() {
            let _ = writeln!(
                out,
                "## Failed requests\n\n{} failed, in {} episodes (failures less than {} s \
                 apart); each with its errors and the last events of the 10 s before it:\n",
                thousands(self.failed as f64),
                self.failure_episodes.len(),
                crate::load::Progress::EPISODE_GAP
            );
            for e in self.failure_episodes.iter().take(EPISODES_SHOWN) {
                let mut before: Vec<String> = self
                    .events
                    .iter()
                    .filter(|ev| ev.at <= e.from_seconds && ev.at >= e.from_seconds - 10.0)
                    .map(|ev| format!("{:.1} s {}", ev.at, ev.what))
                    .collect();
                before.drain(..before.len().saturating_sub(EVENTS_BEFORE));
                let errors: Vec<String> = e
                    .errors
                    .iter()
                    .map(|(error, n)| format!("{n} × `{error}`"))
                    .collect();
                let _ = writeln!(
                    out,
                    "- {:.2}–{:.2} s, {} failed: {}. Before: {}.",
                    e.from_seconds,
                    e.to_seconds,
                    thousands(e.failed as f64),
                    errors.join(", "),
                    if before.is_empty() {
                        "nothing".into()
                    } else {
                        before.join("; ")
                    }
                );
            }
            if self.failure_episodes.len() > EPISODES_SHOWN {
                let _ = writeln!(out, "- … the others are in the JSON.");
            }
            out.push('\n');
        }
        if !self.problems.is_empty() {
            let _ = writeln!(out, "## Problems\n");
            for p in &self.problems {
                let _ = writeln!(out, "- {}", p.replace('\n', "\n  "));
            }
            out.push('\n');
        }
    }
}

/// [`SoakReport::plot`] from its parts (also of a report read back from its JSON: `weft-bench
/// soak-plot`).
pub fn memory_plot(settings: &SoakSettings, w: &Windows, memory: &[Memory]) -> String {
    let min = |s: f64| s / 60.0;
    let lines: Vec<Line> = memory
        .iter()
        .map(|m| Line {
            name: m.component.clone(),
            points: m
                .samples
                .iter()
                .map(|(t, k)| (min(*t), k.map_or(f64::NAN, |k| k as f64 / 1024.0)))
                .collect(),
        })
        .collect();
    let bands = [
        Band {
            from: min(w.baseline.0),
            to: min(w.baseline.1),
            label: "after warm-up".into(),
        },
        Band {
            from: min(w.end.0),
            to: min(w.end.1),
            label: "end".into(),
        },
    ];
    plot::series_svg(
        &format!(
            "Soak: memory at {} req/s, certificates every {:.0} s",
            settings.rate, settings.rotate_every_seconds
        ),
        "minutes",
        "VmRSS (MiB)",
        &lines,
        &bands,
    )
}

/// Failure episodes listed in the summary.
const EPISODES_SHOWN: usize = 20;
/// Events listed before each of them.
const EVENTS_BEFORE: usize = 4;

/// `90` → `1.5 min`, `1800` → `30 min`.
fn minutes(seconds: f64) -> String {
    let m = seconds / 60.0;
    if (m - m.round()).abs() < 1e-9 {
        format!("{m:.0} min")
    } else {
        format!("{m:.1} min")
    }
}
