//! The publisher in a build without the `fleet` feature: there is none. Config validation
//! refuses `[mqtt] url` first, so `start` is reached only by a caller that skipped it, and a
//! `Telemetry` value cannot exist.

use std::convert::Infallible;

use anyhow::{bail, Result};

use super::{MqttConfig, TelemetryContext, FLEET_NOT_BUILT};

pub struct Telemetry(Infallible);

impl Telemetry {
    pub fn start(_cfg: &MqttConfig, _ctx: TelemetryContext) -> Result<Telemetry> {
        bail!("mqtt: {FLEET_NOT_BUILT}")
    }

    pub fn event(&self, _name: &str, _detail: serde_json::Value) {
        match self.0 {}
    }

    pub fn stop(self) {
        match self.0 {}
    }
}

/// As the real one: dropping it stops it.
impl Drop for Telemetry {
    fn drop(&mut self) {
        match self.0 {}
    }
}
