//! The control plane's Prometheus metrics, written when scraped (`--metrics-listen`):
//! whether sleep is inhibited, and what it dropped of its own telemetry. The FUSE side's
//! metrics are the mount daemon's.

use fusestream_shared::metrics::{Exposition, Kind};
use fusestream_shared::telemetry::TelemetryStats;
use tokio::sync::watch;

use crate::power::PowerState;

#[derive(Clone)]
pub struct ControlMetrics {
    pub telemetry: TelemetryStats,
    pub power: watch::Receiver<PowerState>,
}

impl ControlMetrics {
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        let inhibited = self.power.borrow().inhibited();
        out.single(
            "fusestream_power_inhibited",
            Kind::Gauge,
            "1 while idle sleep is inhibited because files of the mount are open (or in the grace after).",
            f64::from(u8::from(inhibited)),
        );
        self.telemetry.write_metrics(&mut out);
        out.into_text()
    }
}
