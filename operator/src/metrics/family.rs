//! A gauge whose extra labels vary from one DryRun status to the next (lock modes, SQLSTATE classes, the latest
//! run): it remembers the series it set for each DryRun, so that a new status replaces them all and a deleted
//! DryRun leaves none.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{GaugeVec, Opts, Registry};

type Key = (String, String);

pub struct Family {
    gauge: GaugeVec,
    seen: Mutex<HashMap<Key, Vec<Vec<String>>>>,
}

impl Family {
    /// A gauge labelled by `namespace`, `dryrun` and `extra`.
    pub fn new(registry: &Registry, name: &str, help: &str, extra: &[&str]) -> Result<Self, prometheus::Error> {
        let labels: Vec<&str> = ["namespace", "dryrun"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let gauge = GaugeVec::new(Opts::new(name, help), &labels)?;
        registry.register(Box::new(gauge.clone()))?;
        Ok(Family {
            gauge,
            seen: Mutex::new(HashMap::new()),
        })
    }

    pub fn collector(&self) -> &dyn prometheus::core::Collector {
        &self.gauge
    }

    /// DryRun `ns/name`'s series become `series` (extra label values, value); the others it had go.
    pub fn replace(&self, ns: &str, name: &str, series: Vec<(Vec<String>, f64)>) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let key = (ns.to_string(), name.to_string());
        let labels = |extra: &[String]| -> Vec<String> {
            [ns.to_string(), name.to_string()]
                .into_iter()
                .chain(extra.iter().cloned())
                .collect()
        };
        for old in seen.remove(&key).unwrap_or_default() {
            if !series.iter().any(|(extra, _)| *extra == old) {
                let _ = self.gauge.remove_label_values(&labels(&old));
            }
        }
        for (extra, value) in &series {
            self.gauge.with_label_values(&labels(extra)).set(*value);
        }
        if !series.is_empty() {
            seen.insert(key, series.into_iter().map(|(extra, _)| extra).collect());
        }
    }

    /// DryRun `ns/name` was deleted.
    pub fn forget(&self, ns: &str, name: &str) {
        self.replace(ns, name, Vec::new());
    }
}
