//! The operator's Prometheus metrics (`/metrics`): reconciles and their errors by controller and error kind, how
//! long reconciles take, and each DryRun's latest results ([`dryrun`]).

mod dryrun;
mod family;

pub use dryrun::DryRunMetrics;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    /// Each DryRun's latest results.
    pub dryruns: DryRunMetrics,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("understudy_operator_reconciles_total", "Reconciles, by controller"),
            &["controller"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "understudy_operator_reconcile_errors_total",
                "Reconciles that failed, by controller and error kind",
            ),
            &["controller", "error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "understudy_operator_reconcile_duration_seconds",
                "How long reconciles take",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["controller"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let dryruns = DryRunMetrics::new(&registry)?;
        Ok(Metrics {
            dryruns,
            registry,
            reconciles,
            errors,
            duration,
        })
    }

    /// Counts a reconcile of `controller` and times it until the returned guard drops.
    pub fn reconcile(&self, controller: &str) -> prometheus::HistogramTimer {
        self.reconciles.with_label_values(&[controller]).inc();
        self.duration.with_label_values(&[controller]).start_timer()
    }

    pub fn error(&self, controller: &str, label: &str) {
        self.errors.with_label_values(&[controller, label]).inc();
    }

    /// The name of every metric the operator serves (a histogram's series add `_bucket`, `_sum` and `_count`).
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let mut collectors: Vec<&dyn Collector> = vec![&self.reconciles, &self.errors, &self.duration];
        collectors.extend(self.dryruns.collectors());
        understudy::metrics::names_of(&collectors)
    }

    pub fn render(&self) -> String {
        understudy::metrics::render(&self.registry)
    }
}
