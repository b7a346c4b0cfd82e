//! The publisher: one thread owning the MQTT connection. It publishes the records from the spool
//! (QoS 1: the cursor moves only over records the broker acknowledged), the retained status
//! every `status_interval_s`, live events the daemon hands it (reload), `online` (retained; the
//! broker's last will says `false` when the device vanishes) and, opted in, Home Assistant
//! discovery.
//!
//! A broker that goes away costs nothing but a log line: the daemon keeps running and recording,
//! and on reconnect the publisher starts again from the last acknowledged record. rumqttc is
//! used with clean sessions, so it never resends on its own: the spool is the one source of
//! repeats, and there are none unless the broker acknowledged a message that never reached us.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rumqttc::{
    Client, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, RecvTimeoutError,
    TlsConfiguration, Transport,
};

use super::spool::Spool;
use super::{
    discovery_messages, record_message, BrokerUrl, MqttConfig, TelemetryContext, TrackVerdicts,
};

/// Records in flight at once (published, not yet acknowledged).
const WINDOW: usize = 64;
/// How long a stopping daemon waits for the broker to take its last records.
const DRAIN: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(200);
/// How often the spool is looked at for new records when it had none.
const SPOOL_POLL: Duration = Duration::from_millis(500);
const CURSOR_SAVE: Duration = Duration::from_secs(1);
/// While connecting, one poll must outlast rumqttc's own connect timeout (5 s): a poll cut short
/// drops the half-done TCP/TLS/CONNECT handshake and the next one starts it again, so a broker a
/// few round trips away would never be reached. (A stop waits for the attempt at worst.)
const CONNECT_WAIT: Duration = Duration::from_secs(7);

/// The running publisher; dropping it (or [`Telemetry::stop`]) drains and disconnects.
pub struct Telemetry {
    live: Sender<(String, serde_json::Value)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Telemetry {
    /// Checks the config's files (TLS) and the spool, then connects in the background: a broker
    /// that is not there yet is not a start-up error.
    pub fn start(cfg: &MqttConfig, ctx: TelemetryContext) -> Result<Telemetry> {
        let url = BrokerUrl::parse(&cfg.url)?;
        let options = options(cfg, &ctx.device_id, &url)?;
        let spool = Spool::open(&ctx.records_dir).context("mqtt spool")?;
        let (live, live_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = Publisher {
            prefix: cfg.prefix(&ctx.device_id),
            qos: match cfg.qos {
                0 => QoS::AtMostOnce,
                _ => QoS::AtLeastOnce,
            },
            cfg: cfg.clone(),
            broker: format!("{}:{}", url.host, url.port),
            ctx,
            spool,
            live: live_rx,
            stop: stop.clone(),
            verdicts: TrackVerdicts::default(),
            acked_verdicts: TrackVerdicts::default(),
            read_to: 0,
            in_flight: VecDeque::new(),
            unassigned: VecDeque::new(),
            by_pkid: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || publisher.run(options))
            .context("starting the mqtt thread")?;
        Ok(Telemetry {
            live,
            stop,
            thread: Some(thread),
        })
    }

    /// A live event (not in the records): published on `.../event` if connected.
    pub fn event(&self, name: &str, detail: serde_json::Value) {
        let _ = self.live.send((name.into(), detail));
    }

    /// Publish what the records still hold (for a few seconds at most), say offline, disconnect.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.finish();
    }
}

fn options(cfg: &MqttConfig, device_id: &str, url: &BrokerUrl) -> Result<MqttOptions> {
    let client_id = match cfg.client_id.is_empty() {
        true => device_id.to_string(),
        false => cfg.client_id.clone(),
    };
    let mut o = MqttOptions::new(client_id, url.host.clone(), url.port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_clean_session(true)
        .set_max_packet_size(256 << 10, 256 << 10)
        .set_last_will(LastWill::new(
            format!("{}/online", cfg.prefix(device_id)),
            "false",
            QoS::AtLeastOnce,
            true,
        ));
    if !cfg.username.is_empty() {
        o.set_credentials(cfg.username.clone(), cfg.password.clone());
    }
    if url.tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            tls_config(cfg)?,
        ))));
    }
    Ok(o)
}

fn read_pem(what: &str, path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("mqtt.{what} = {path}: cannot read"))
}

/// rustls with the ring provider, the broker checked against `ca_file`.
fn tls_config(cfg: &MqttConfig) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = read_pem("ca_file", &cfg.ca_file)?;
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        let cert = cert.with_context(|| format!("mqtt.ca_file = {}: bad PEM", cfg.ca_file))?;
        roots
            .add(cert)
            .with_context(|| format!("mqtt.ca_file = {}: bad certificate", cfg.ca_file))?;
    }
    if roots.is_empty() {
        anyhow::bail!("mqtt.ca_file = {}: no PEM certificate in it", cfg.ca_file);
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("mqtt: TLS setup")?
    .with_root_certificates(roots);
    if cfg.client_cert.is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let pem = read_pem("client_cert", &cfg.client_cert)?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("mqtt.client_cert = {}: bad PEM", cfg.client_cert))?;
    let pem = read_pem("client_key", &cfg.client_key)?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("mqtt.client_key = {}: bad PEM", cfg.client_key))?
        .with_context(|| format!("mqtt.client_key = {}: no private key in it", cfg.client_key))?;
    builder
        .with_client_auth_cert(chain, key)
        .with_context(|| format!("mqtt.client_cert = {}: unusable", cfg.client_cert))
}

/// What a publish was, to be matched with its packet id when rumqttc sends it.
#[derive(Clone, Copy, Debug)]
enum Tag {
    /// A spool record (its seq).
    Record(u64),
    Other,
}

struct InFlight {
    seq: u64,
    acked: bool,
    /// The track verdict this record published (applied to the acknowledged state on ack).
    verdict: Option<(u32, crate::verdict::Label)>,
}

struct Publisher {
    cfg: MqttConfig,
    prefix: String,
    qos: QoS,
    broker: String,
    ctx: TelemetryContext,
    spool: Spool,
    live: Receiver<(String, serde_json::Value)>,
    stop: Arc<AtomicBool>,
    /// Verdict changes as of the last record read, and as of the last acknowledged one (what a
    /// re-read after an outage starts from, so it decides the same way).
    verdicts: TrackVerdicts,
    acked_verdicts: TrackVerdicts,
    /// The last record read from the spool (published or skipped).
    read_to: u64,
    in_flight: VecDeque<InFlight>,
    /// Publishes handed to rumqttc, in order, not yet given a packet id.
    unassigned: VecDeque<Tag>,
    by_pkid: HashMap<u16, u64>,
}

impl Publisher {
    fn run(mut self, options: MqttOptions) {
        let (client, mut connection) = Client::new(options, 4 * WINDOW);
        let mut connected = false;
        let mut outage_said = false;
        let mut backoff = Duration::from_millis(250);
        let mut last_status: Option<Instant> = None;
        let mut last_spool_read: Option<Instant> = None;
        let mut last_save = Instant::now();
        let mut drain_deadline: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::Relaxed) && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + DRAIN);
            }
            if let Some(deadline) = drain_deadline {
                let drained = self.in_flight.is_empty()
                    && self
                        .spool
                        .read_after(self.read_to, 1)
                        .map_or(true, |r| r.is_empty());
                if !connected || drained || Instant::now() >= deadline {
                    break;
                }
            }
            if connected {
                if last_status
                    .is_none_or(|t| t.elapsed().as_secs_f64() >= self.cfg.status_interval_s)
                {
                    last_status = Some(Instant::now());
                    self.publish_status(&client);
                }
                while let Ok((name, detail)) = self.live.try_recv() {
                    let payload = serde_json::json!({
                        "schema": super::PAYLOAD_SCHEMA,
                        "device": self.ctx.device_id,
                        "wall_ms": crate::clock::wall_ms(),
                        "event": name,
                        "detail": detail,
                    });
                    self.send(&client, "event", false, &payload, Tag::Other);
                }
                let room = WINDOW.saturating_sub(self.in_flight.len());
                if room > 0 && last_spool_read.is_none_or(|t| t.elapsed() >= SPOOL_POLL) {
                    match self.publish_records(&client, room) {
                        // A full batch: more may wait, read again at once.
                        Ok(n) if n == room => last_spool_read = None,
                        Ok(_) => last_spool_read = Some(Instant::now()),
                        Err(e) => {
                            log::warn!("mqtt: {e:#}");
                            last_spool_read = Some(Instant::now());
                        }
                    }
                }
            }
            if last_save.elapsed() >= CURSOR_SAVE {
                last_save = Instant::now();
                self.save_cursor();
            }
            let wait = if connected { POLL } else { CONNECT_WAIT };
            match connection.recv_timeout(wait) {
                Ok(Ok(event)) => {
                    if let Event::Incoming(Packet::ConnAck(_)) = event {
                        connected = true;
                        backoff = Duration::from_millis(250);
                        self.connected(&client, std::mem::take(&mut outage_said));
                        last_status = None;
                        last_spool_read = None;
                    } else {
                        self.handle(event);
                    }
                }
                Ok(Err(e)) => {
                    if !outage_said {
                        log::warn!(
                            "mqtt: broker {} {}: {e}; records are kept and published when it is back",
                            self.broker,
                            if connected { "lost" } else { "unreachable" }
                        );
                        outage_said = true;
                    }
                    connected = false;
                    self.reset();
                    if drain_deadline.is_some() {
                        break;
                    }
                    // rumqttc retries at the next poll: wait first, a little longer each time.
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(POLL);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if connected {
            self.send(
                &client,
                "online",
                true,
                &serde_json::Value::from("false"),
                Tag::Other,
            );
            let _ = client.disconnect();
            // Let the offline message and the disconnect go out.
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                match connection.recv_timeout(POLL) {
                    Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
                    Ok(Ok(event)) => self.handle(event),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        self.save_cursor();
    }

    fn save_cursor(&mut self) {
        if let Err(e) = self.spool.save() {
            log::warn!("mqtt: {e:#}");
        }
    }

    /// A (re)connection: online, discovery, and the records from the last acknowledged one, no
    /// more than the backlog allows.
    fn connected(&mut self, client: &Client, after_outage: bool) {
        self.reset();
        let acked = self.spool.acked();
        match self.spool.backlog(acked, self.cfg.backlog as usize) {
            Ok((waiting, skip_to)) => {
                if let Some(to) = skip_to {
                    log::warn!(
                        "mqtt: {} records waited, more than mqtt.backlog = {}; the oldest {} are skipped (still on disk)",
                        waiting,
                        self.cfg.backlog,
                        waiting - self.cfg.backlog as usize
                    );
                    self.spool.ack(to);
                    self.read_to = to;
                }
                let after = if after_outage { " again" } else { "" };
                log::info!(
                    "mqtt: connected to {}{after}; {} records to publish",
                    self.broker,
                    waiting.min(self.cfg.backlog as usize)
                );
            }
            Err(e) => log::warn!("mqtt: {e:#}"),
        }
        self.send(
            client,
            "online",
            true,
            &serde_json::Value::from("true"),
            Tag::Other,
        );
        if self.cfg.homeassistant {
            for (topic, config) in discovery_messages(&self.cfg, &self.ctx.device_id, &self.prefix)
            {
                self.send_to(client, topic, true, &config, Tag::Other);
            }
        }
    }

    /// Forget everything in flight: rumqttc drops it with the session, and reading starts again
    /// after the last acknowledged record.
    fn reset(&mut self) {
        self.in_flight.clear();
        self.unassigned.clear();
        self.by_pkid.clear();
        self.read_to = self.spool.acked();
        self.verdicts = self.acked_verdicts.clone();
        while self.live.try_recv().is_ok() {}
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Tag::Record(seq)) = self.unassigned.pop_front() {
                    match self.qos {
                        QoS::AtMostOnce => self.acknowledged(seq),
                        _ => {
                            self.by_pkid.insert(pkid, seq);
                        }
                    }
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = self.by_pkid.remove(&ack.pkid) {
                    self.acknowledged(seq);
                }
            }
            _ => {}
        }
    }

    /// The broker has a record: the cursor moves over every record up to the first that is
    /// still unacknowledged.
    fn acknowledged(&mut self, seq: u64) {
        if let Some(f) = self.in_flight.iter_mut().find(|f| f.seq == seq) {
            f.acked = true;
        }
        self.advance();
    }

    fn advance(&mut self) {
        while self.in_flight.front().is_some_and(|f| f.acked) {
            let f = self.in_flight.pop_front().expect("front");
            if let Some((track, label)) = f.verdict {
                self.acked_verdicts.changed(track, label);
            }
            self.spool.ack(f.seq);
        }
    }

    /// Publish up to `room` records after the last one read; returns how many were read.
    fn publish_records(&mut self, client: &Client, room: usize) -> Result<usize> {
        let records = self.spool.read_after(self.read_to, room)?;
        for (seq, record) in &records {
            self.read_to = *seq;
            let verdict = match &record.event {
                crate::sinks::records::Event::Face(f) => Some((f.track, f.verdict)),
                _ => None,
            };
            let message =
                record_message(*seq, record, &self.ctx.emotion_classes, &mut self.verdicts);
            let published = message.is_some();
            self.in_flight.push_back(InFlight {
                seq: *seq,
                acked: !published,
                verdict: if published { verdict } else { None },
            });
            if let Some((topic, payload)) = message {
                self.send(client, topic, false, &payload, Tag::Record(*seq));
            }
        }
        // Records not published (no verdict change) count as done once those before them are.
        self.advance();
        Ok(records.len())
    }

    fn publish_status(&mut self, client: &Client) {
        let mut status = self
            .ctx
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        if let Some(obj) = status.as_object_mut() {
            obj.insert("schema".into(), super::PAYLOAD_SCHEMA.into());
            obj.insert("wall_ms".into(), crate::clock::wall_ms().into());
            let models: serde_json::Map<String, serde_json::Value> = self
                .ctx
                .models
                .iter()
                .map(|(k, sha)| (k.clone(), sha.clone().into()))
                .collect();
            obj.insert("models".into(), models.into());
        }
        self.send(client, "status", true, &status, Tag::Other);
    }

    fn send(
        &mut self,
        client: &Client,
        topic: &str,
        retain: bool,
        payload: &serde_json::Value,
        tag: Tag,
    ) {
        let topic = format!("{}/{topic}", self.prefix);
        self.send_to(client, topic, retain, payload, tag);
    }

    fn send_to(
        &mut self,
        client: &Client,
        topic: String,
        retain: bool,
        payload: &serde_json::Value,
        tag: Tag,
    ) {
        // `online` is a bare string, every other payload JSON.
        let bytes = match payload {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            v => v.to_string().into_bytes(),
        };
        match client.try_publish(topic, self.qos, retain, bytes) {
            Ok(()) => self.unassigned.push_back(tag),
            // The request queue is full (a slow broker): the record stays unacknowledged and is
            // read again after the next reconnect; status and events are simply dropped.
            Err(e) => log::debug!("mqtt: publish queued nothing: {e}"),
        }
    }
}
