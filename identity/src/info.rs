//! Info series: a family of gauges, one per value of one label (a fingerprint), 1 for what
//! holds now and 0 for what held before. A workload or CA has a handful of anchors and
//! issuers over its life, so the family stays small.

use metrics::Gauge;
use weft_runtime::metrics::Registry;

pub(crate) struct InfoSeries {
    registry: Registry,
    name: &'static str,
    help: &'static str,
    series: Vec<(String, Gauge)>,
}

impl InfoSeries {
    pub fn new(registry: &Registry, name: &'static str, help: &'static str) -> Self {
        Self {
            registry: registry.clone(),
            name,
            help,
            series: Vec::new(),
        }
    }

    /// 1 for each fingerprint in `now`, 0 for every other one seen before.
    pub fn set(&mut self, now: &[String]) {
        for fp in now {
            if !self.series.iter().any(|(f, _)| f == fp) {
                let g = self
                    .registry
                    .gauge(self.name, self.help, &[("fingerprint", fp)]);
                self.series.push((fp.clone(), g));
            }
        }
        for (fp, g) in &self.series {
            g.set(if now.contains(fp) { 1.0 } else { 0.0 });
        }
    }
}
