//! The control plane's Prometheus metrics, written when scraped (`--metrics-listen`):
//! what it dropped of its own telemetry. The FUSE side's metrics are the mount daemon's.

use fusestream_shared::metrics::Exposition;
use fusestream_shared::telemetry::TelemetryStats;

#[derive(Clone)]
pub struct ControlMetrics {
    pub telemetry: TelemetryStats,
}

impl ControlMetrics {
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        self.telemetry.write_metrics(&mut out);
        out.into_text()
    }
}
