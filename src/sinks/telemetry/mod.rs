//! Fleet telemetry over MQTT: the `[mqtt]` section, the topics and their JSON payloads, the
//! records read as a spool ([`spool`]) and the publisher thread ([`mqtt`]).
//!
//! The records on disk are the spool: the publisher reads them after the last record the broker
//! acknowledged (a cursor kept beside them), so a broker that is away loses nothing, and a
//! daemon restart resumes where the broker last confirmed. Every message made from a record
//! carries that record's `seq` (its place in the record files), which only grows: a consumer
//! drops a repeat by comparing it with the last one it kept.

#[cfg(feature = "fleet")]
pub mod mqtt;
#[cfg(not(feature = "fleet"))]
#[path = "not_built.rs"]
pub mod mqtt;
pub mod spool;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::records::{record_json, Event, Record};
use crate::verdict::Label;

pub use mqtt::Telemetry;

/// Why `[mqtt]` and `[http]` are refused by a build without the `fleet` feature.
pub const FLEET_NOT_BUILT: &str =
    "this veriface was built without the `fleet` feature (MQTT telemetry and the operator page)";

/// What the publisher is given besides its config.
pub struct TelemetryContext {
    pub device_id: String,
    pub records_dir: PathBuf,
    pub emotion_classes: Vec<String>,
    /// (manifest key, sha256 hex) of each loaded model: in every status message.
    pub models: Vec<(String, String)>,
    /// The daemon's status snapshot, published as is (plus `schema` and `models`).
    pub status: Arc<Mutex<serde_json::Value>>,
}

/// The payloads' schema version (`"schema"` in every JSON message).
pub const PAYLOAD_SCHEMA: u32 = 1;

/// `[mqtt]`: where the telemetry goes. An empty `url` leaves it off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`; empty: no telemetry.
    pub url: String,
    /// mqtts: the CA certificate (PEM) that signed the broker's certificate.
    pub ca_file: String,
    /// mqtts with client certificates: this device's certificate chain and key (PEM).
    pub client_cert: String,
    pub client_key: String,
    pub username: String,
    pub password: String,
    /// Empty: the device id.
    pub client_id: String,
    /// Empty: `veriface/<device_id>`.
    pub topic_prefix: String,
    /// 0 (at most once) or 1 (at least once: what keeps records from being lost).
    pub qos: u8,
    /// The retained status message, this often.
    pub status_interval_s: f64,
    /// After an outage, publish at most this many of the records made meanwhile (the newest);
    /// the older ones stay on disk and in `log decode`.
    pub backlog: u32,
    pub keep_alive_s: u64,
    /// Home Assistant MQTT discovery: the device appears as sensors in an existing dashboard.
    pub homeassistant: bool,
    pub discovery_prefix: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: String::new(),
            ca_file: String::new(),
            client_cert: String::new(),
            client_key: String::new(),
            username: String::new(),
            password: String::new(),
            client_id: String::new(),
            topic_prefix: String::new(),
            qos: 1,
            status_interval_s: 10.0,
            backlog: 10_000,
            keep_alive_s: 30,
            homeassistant: false,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

/// A broker address from `mqtt.url`.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            bail!("mqtt.url = {url:?}: mqtt://host[:port] or mqtts://host[:port]");
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        // `[v6 address]:port`, `host:port` or `host`.
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| anyhow::anyhow!("mqtt.url = {url:?}: no closing ]"))?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains('/') || host.contains('@') {
            bail!("mqtt.url = {url:?}: no host (mqtt://host[:port])");
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| anyhow::anyhow!("mqtt.url = {url:?}: port {p:?} is no port"))?,
            None => default_port,
        };
        Ok(BrokerUrl {
            tls,
            host: host.into(),
            port,
        })
    }
}

impl MqttConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub fn validate(&self) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if !cfg!(feature = "fleet") {
            bail!("mqtt.url: {FLEET_NOT_BUILT}");
        }
        let url = BrokerUrl::parse(&self.url)?;
        if url.tls && self.ca_file.is_empty() {
            bail!(
                "mqtt.ca_file: needed for mqtts:// (the CA that signed the broker's certificate)"
            );
        }
        let tls_files = !self.ca_file.is_empty() || !self.client_cert.is_empty();
        if !url.tls && tls_files {
            bail!("mqtt.ca_file / client_cert: only with mqtts:// (the url is plain mqtt://)");
        }
        if self.client_cert.is_empty() != self.client_key.is_empty() {
            bail!("mqtt.client_cert and mqtt.client_key: both or neither");
        }
        if !self.password.is_empty() && self.username.is_empty() {
            bail!("mqtt.password: needs mqtt.username");
        }
        if self.qos > 1 {
            bail!("mqtt.qos = {}: 0 or 1", self.qos);
        }
        let topic_ok = |t: &str| !t.contains(['+', '#', '\0']) && !t.ends_with('/');
        if !topic_ok(&self.topic_prefix) || !topic_ok(&self.discovery_prefix) {
            bail!("mqtt.topic_prefix / discovery_prefix: no wildcards (+, #) and no trailing /");
        }
        if !(self.status_interval_s >= 0.5 && self.status_interval_s <= 3600.0) {
            bail!(
                "mqtt.status_interval_s = {}: within 0.5..3600",
                self.status_interval_s
            );
        }
        if !(5..=3600).contains(&self.keep_alive_s) {
            bail!("mqtt.keep_alive_s = {}: within 5..3600", self.keep_alive_s);
        }
        Ok(())
    }

    pub fn prefix(&self, device_id: &str) -> String {
        match self.topic_prefix.is_empty() {
            true => format!("veriface/{device_id}"),
            false => self.topic_prefix.clone(),
        }
    }
}

/// The topic a record goes to under the prefix, and its payload; None for a record that is not
/// published (a face record whose track's verdict did not change).
pub fn record_message(
    seq: u64,
    record: &Record,
    emotion_classes: &[String],
    verdicts: &mut TrackVerdicts,
) -> Option<(&'static str, serde_json::Value)> {
    let topic = match &record.event {
        Event::Face(f) => {
            if !verdicts.changed(f.track, f.verdict) {
                return None;
            }
            "verdict"
        }
        Event::Session(_) => "session",
        Event::Start { .. } | Event::Stop | Event::CameraLost { .. } | Event::CameraBack => "event",
    };
    let mut value = record_json(record);
    let obj = value.as_object_mut().expect("records are JSON objects");
    obj.insert("schema".into(), PAYLOAD_SCHEMA.into());
    obj.insert("seq".into(), seq.into());
    if let Event::Face(f) = &record.event {
        let name = f
            .emotion
            .and_then(|i| emotion_classes.get(i as usize))
            .map(|s| s.as_str());
        obj.insert("emotion".into(), name.into());
    }
    Some((topic, value))
}

/// Each live track's last published verdict: a face record goes out when its track's verdict
/// changes (or the track is new), not at every periodic record. Bounded: the oldest tracks
/// (lowest ids; ids only grow) are forgotten first.
#[derive(Clone, Debug, Default)]
pub struct TrackVerdicts {
    last: std::collections::BTreeMap<u32, Label>,
}

const REMEMBERED_TRACKS: usize = 256;

impl TrackVerdicts {
    pub fn changed(&mut self, track: u32, label: Label) -> bool {
        let changed = self.last.insert(track, label) != Some(label);
        while self.last.len() > REMEMBERED_TRACKS {
            self.last.pop_first();
        }
        changed
    }
}

/// Home Assistant discovery: one retained config message per sensor (topic, payload).
pub fn discovery_messages(
    cfg: &MqttConfig,
    device_id: &str,
    prefix: &str,
) -> Vec<(String, serde_json::Value)> {
    let node: String = device_id
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '_',
            },
        )
        .collect();
    let device = serde_json::json!({
        "identifiers": [format!("veriface_{node}")],
        "name": format!("veriface {device_id}"),
        "manufacturer": "veriface",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    [
        (
            "verdict",
            "Verdict",
            "verdict",
            "{{ value_json.verdict }}",
            None,
        ),
        (
            "emotion",
            "Emotion",
            "verdict",
            "{{ value_json.emotion }}",
            None,
        ),
        (
            "fps",
            "Analysed fps",
            "status",
            "{{ value_json.fps | round(1) }}",
            Some("fps"),
        ),
        (
            "camera",
            "Camera",
            "status",
            "{{ value_json.camera }}",
            None,
        ),
        ("state", "State", "status", "{{ value_json.state }}", None),
    ]
    .into_iter()
    .map(|(key, name, topic, template, unit)| {
        let mut config = serde_json::json!({
            "name": name,
            "unique_id": format!("veriface_{node}_{key}"),
            "state_topic": format!("{prefix}/{topic}"),
            "value_template": template,
            "availability_topic": format!("{prefix}/online"),
            "payload_available": "true",
            "payload_not_available": "false",
            "device": device,
        });
        if let Some(unit) = unit {
            config["unit_of_measurement"] = unit.into();
        }
        (
            format!("{}/sensor/{node}/{key}/config", cfg.discovery_prefix),
            config,
        )
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let u = BrokerUrl::parse("mqtt://broker.local").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (false, "broker.local", 1883)
        );
        let u = BrokerUrl::parse("mqtts://10.0.0.2:9883/").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "10.0.0.2", 9883));
        let u = BrokerUrl::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u@h",
        ] {
            let e = BrokerUrl::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("mqtt.url"), "{bad}: {e}");
        }
    }

    #[cfg(feature = "fleet")]
    #[test]
    fn bad_combinations_fail_validation() {
        let with = |f: &dyn Fn(&mut MqttConfig)| {
            let mut c = MqttConfig {
                url: "mqtts://b:8883".into(),
                ca_file: "/etc/ca.pem".into(),
                ..MqttConfig::default()
            };
            f(&mut c);
            c.validate()
        };
        assert!(with(&|_| {}).is_ok());
        for (change, key) in [
            (
                &(|c: &mut MqttConfig| c.ca_file.clear()) as &dyn Fn(&mut MqttConfig),
                "ca_file",
            ),
            (&|c| c.client_cert = "c.pem".into(), "client_key"),
            (&|c| c.password = "p".into(), "username"),
            (&|c| c.qos = 2, "qos"),
            (&|c| c.topic_prefix = "a/#".into(), "topic_prefix"),
            (&|c| c.url = "mqtt://b".into(), "only with mqtts"),
        ] {
            let e = format!("{:#}", with(change).unwrap_err());
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn a_track_is_published_when_its_verdict_changes() {
        let mut v = TrackVerdicts::default();
        assert!(v.changed(1, Label::Uncertain));
        assert!(!v.changed(1, Label::Uncertain));
        assert!(v.changed(2, Label::Uncertain));
        assert!(v.changed(1, Label::Fake));
        assert!(!v.changed(1, Label::Fake));
        for t in 10..10 + REMEMBERED_TRACKS as u32 {
            v.changed(t, Label::Real);
        }
        assert_eq!(v.last.len(), REMEMBERED_TRACKS);
        // Track 1 was forgotten (oldest): its next record counts as new.
        assert!(v.changed(1, Label::Fake));
    }
}
