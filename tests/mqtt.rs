//! Fleet telemetry against a real broker: Mosquitto (Debian's `mosquitto`, which `.ci/run`
//! installs) on a free loopback port, a subscriber, and `veriface run --source` publishing.
//! Plain, TLS with a username and password, and a broker restarted mid-run: every record made
//! while it was down arrives, in order, none twice.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, repo, scratch, wait_for};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const DEVICE: &str = "kiosk-7";
const PREFIX: &str = "veriface/kiosk-7";

struct Broker {
    child: Child,
    conf: PathBuf,
}

impl Broker {
    /// Mosquitto with `listeners` (config lines) and persistence in `dir`; returns once every
    /// port in `ports` accepts connections.
    fn start(dir: &Path, listeners: &str, ports: &[u16]) -> Broker {
        let conf = dir.join("mosquitto.conf");
        // As root, Mosquitto would switch to its own user, who cannot write our scratch folder.
        let user = match unsafe { libc::geteuid() } {
            0 => "user root\n",
            _ => "",
        };
        std::fs::write(
            &conf,
            format!(
                "{user}persistence true\npersistence_location {}/\nlog_dest stderr\n{listeners}",
                dir.display()
            ),
        )
        .unwrap();
        Broker::run(conf, ports)
    }

    fn run(conf: PathBuf, ports: &[u16]) -> Broker {
        // Debian puts the broker in /usr/sbin, not on every user's PATH.
        let program = match Path::new("/usr/sbin/mosquitto").exists() {
            true => "/usr/sbin/mosquitto",
            false => "mosquitto",
        };
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto: install Debian's `mosquitto` package (.ci/run does)");
        let mut broker = Broker { child, conf };
        let t0 = Instant::now();
        for &port in ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = broker.child.try_wait().unwrap() {
                    let mut err = String::new();
                    let _ = broker.child.stderr.take().unwrap().read_to_string(&mut err);
                    panic!("mosquitto exited ({status}): {err}");
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "mosquitto did not listen"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        broker
    }

    /// SIGTERM: Mosquitto saves its persistent sessions on the way out.
    fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Debug)]
struct Message {
    topic: String,
    payload: Vec<u8>,
    /// A broker redelivery (its own at-least-once), not a new publish.
    dup: bool,
}

impl Message {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{}: {e}: {:?}", self.topic, self.payload))
    }
}

/// A fleet-side subscriber to `veriface/#` (and Home Assistant's discovery topics) with a persistent session (QoS 1): what is published
/// while it is away waits for it in the broker.
struct Subscriber {
    got: Arc<Mutex<Vec<Message>>>,
    subscribed: Arc<Mutex<bool>>,
}

impl Subscriber {
    fn start(port: u16) -> Subscriber {
        let mut o = MqttOptions::new("fleet-view", "127.0.0.1", port);
        o.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(o, 100);
        client.subscribe("veriface/#", QoS::AtLeastOnce).unwrap();
        client
            .subscribe("homeassistant/#", QoS::AtLeastOnce)
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        let (g, s) = (got.clone(), subscribed.clone());
        std::thread::spawn(move || {
            let _client = client;
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => g.lock().unwrap().push(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        dup: p.dup,
                    }),
                    Ok(Event::Incoming(Packet::SubAck(ack))) if ack.pkid == 2 => {
                        *s.lock().unwrap() = true
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        let sub = Subscriber { got, subscribed };
        wait_for("the subscription", Duration::from_secs(10), || {
            *sub.subscribed.lock().unwrap()
        });
        sub
    }

    fn messages(&self) -> Vec<Message> {
        self.got.lock().unwrap().clone()
    }

    fn on(&self, topic: &str) -> Vec<Message> {
        let topic = format!("{PREFIX}/{topic}");
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }
}

/// The daemon on the bundled clip with `mqtt` as its `[mqtt]` section; looped, on the samples
/// folder (a still, the clip, a cat: each round brings new face tracks, so new verdicts).
fn daemon(dir: &Path, mqtt: &str, looped: bool) -> Child {
    let config = dir.join("veriface.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"{DEVICE}\"\n[records]\ndir = \"{}\"\nflush_ms = 0\nface_interval_ms = 200\n[mqtt]\n{mqtt}\n",
            dir.join("records").display()
        ),
    )
    .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_veriface"));
    c.current_dir(repo())
        .env("RUST_LOG", "warn,veriface=info")
        .args(["run", "--quiet", "--source"])
        .arg(match looped {
            true => "samples",
            false => "tests/data/astronaut_zoom.mp4",
        })
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if looped {
        c.arg("--loop");
    }
    c.spawn().unwrap()
}

/// Waits for a daemon (the clip ends, or SIGTERM sent) and returns its log.
fn finished(mut child: Child, limit: Duration) -> String {
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("daemon still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "daemon exit {status}: {log}");
    log
}

/// Every record on disk, as (seq, record JSON), from `veriface log decode`: seq is the record
/// file's number in the high 32 bits and the record's offset in the low ones.
fn records_on_disk(dir: &Path) -> Vec<(u64, serde_json::Value)> {
    let o = Command::new(env!("CARGO_BIN_EXE_veriface"))
        .args(["log", "decode"])
        .arg(dir.join("records"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let file = v["file"].as_str().unwrap();
            let number: u64 = file
                .rsplit('/')
                .next()
                .unwrap()
                .trim_start_matches("veriface-")
                .trim_end_matches(".vfr")
                .parse()
                .unwrap();
            ((number << 32) | v["offset"].as_u64().unwrap(), v)
        })
        .collect()
}

/// The records that must be published: events and sessions all, a face record when its
/// track's verdict is new or changed.
fn expected_seqs(records: &[(u64, serde_json::Value)]) -> Vec<u64> {
    let mut last: HashMap<u64, String> = HashMap::new();
    records
        .iter()
        .filter(|(_, r)| match r["event"].as_str().unwrap() {
            "face" => {
                let verdict = r["verdict"].as_str().unwrap().to_string();
                last.insert(r["track"].as_u64().unwrap(), verdict.clone()) != Some(verdict)
            }
            _ => true,
        })
        .map(|(seq, _)| *seq)
        .collect()
}

/// The seqs of the record messages received (verdict, event, session topics), redeliveries by
/// the broker left out.
fn received_seqs(sub: &Subscriber) -> Vec<u64> {
    sub.messages()
        .iter()
        .filter(|m| !m.dup && m.topic.starts_with(PREFIX))
        .filter(|m| {
            ["verdict", "event", "session"]
                .iter()
                .any(|t| m.topic.ends_with(t))
        })
        .filter_map(|m| m.json()["seq"].as_u64())
        .collect()
}

#[test]
fn a_run_publishes_status_verdicts_and_events_to_a_real_broker() {
    let dir = scratch("plain");
    let port = free_port();
    let _broker = Broker::start(
        &dir,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        &[port],
    );
    let sub = Subscriber::start(port);
    let child = daemon(
        &dir,
        &format!(
            "url = \"mqtt://127.0.0.1:{port}\"\nstatus_interval_s = 0.5\nhomeassistant = true"
        ),
        false,
    );
    let log = finished(child, Duration::from_secs(180));
    wait_for("the stop event", Duration::from_secs(5), || {
        sub.on("event").iter().any(|m| m.json()["event"] == "stop")
    });

    // Every record that should go out did, once, in order, with the record's seq.
    let records = records_on_disk(&dir);
    let expected = expected_seqs(&records);
    assert!(expected.len() >= 3, "start, faces, stop: {records:?}");
    assert_eq!(received_seqs(&sub), expected, "{log}");
    let by_seq: BTreeMap<u64, &serde_json::Value> = records.iter().map(|(s, r)| (*s, r)).collect();
    let verdicts = sub.on("verdict");
    assert!(!verdicts.is_empty());
    for m in &verdicts {
        let v = m.json();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["device"], DEVICE);
        let on_disk = by_seq[&v["seq"].as_u64().unwrap()];
        assert_eq!(v["verdict"], on_disk["verdict"]);
        assert_eq!(v["track"], on_disk["track"]);
        assert_eq!(v["smoothed_prob"], on_disk["smoothed_prob"]);
        // The emotion by name (the records keep its index).
        assert!(v["emotion"].is_string(), "{v}");
        assert!(
            v.get("file").is_none(),
            "no file paths leave the device: {v}"
        );
    }
    assert_eq!(sub.on("verdict")[0].json()["emotion"], "happy");
    let events: Vec<String> = sub
        .on("event")
        .iter()
        .map(|m| m.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events.first().map(String::as_str), Some("start"));
    assert_eq!(events.last().map(String::as_str), Some("stop"));

    // Status: retained, with the state, the models and their hashes.
    let status = sub.on("status");
    assert!(!status.is_empty(), "{log}");
    let s = status.last().unwrap().json();
    assert_eq!(s["schema"], 1);
    assert_eq!(s["device_id"], DEVICE);
    let models = s["models"].as_object().expect("models");
    assert!(!models.is_empty());
    assert!(models
        .values()
        .all(|h| h.as_str().is_some_and(|h| h.len() == 64)));
    assert!(
        status.iter().any(|m| m.json()["state"] == "running"),
        "{log}"
    );

    // online: true while running, false after a clean stop; both retained.
    let online: Vec<String> = sub
        .on("online")
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    assert_eq!(online.first().map(String::as_str), Some("true"));
    assert_eq!(online.last().map(String::as_str), Some("false"));

    // Home Assistant discovery: one config per sensor, pointing at our topics.
    let discovery: Vec<Message> = sub.messages();
    let configs: Vec<&Message> = discovery
        .iter()
        .filter(|m| m.topic.starts_with("homeassistant/sensor/kiosk-7/"))
        .collect();
    assert!(configs.len() >= 4, "{configs:?}");
    let verdict_sensor = configs
        .iter()
        .find(|m| m.topic == "homeassistant/sensor/kiosk-7/verdict/config")
        .expect("verdict sensor")
        .json();
    assert_eq!(verdict_sensor["state_topic"], format!("{PREFIX}/verdict"));
    assert_eq!(
        verdict_sensor["availability_topic"],
        format!("{PREFIX}/online")
    );

    // The cursor says everything was acknowledged: a second run publishes only its own records.
    let cursor: u64 = std::fs::read_to_string(dir.join("records/mqtt.cursor"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(cursor, records.last().unwrap().0);
}

/// Writes a CA and a broker certificate for 127.0.0.1 with openssl; returns (ca, cert, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "broker.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "broker.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("broker.pem"),
        dir.join("broker.key"),
    )
}

#[test]
fn tls_with_a_password_publishes_and_a_wrong_password_is_one_warning() {
    let dir = scratch("tls");
    let (ca, cert, key) = certificates(&dir);
    let passwords = dir.join("passwords");
    let o = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["kiosk", "s3cret"])
        .output()
        .expect("mosquitto_passwd (Debian's mosquitto package)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (tls_port, plain_port) = (free_port(), free_port());
    // The device speaks TLS with a password; the test's subscriber listens on a plain loopback
    // listener of the same broker.
    let _broker = Broker::start(
        &dir,
        &format!(
            "per_listener_settings true\n\
             listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nallow_anonymous false\npassword_file {}\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\n",
            ca.display(),
            cert.display(),
            key.display(),
            passwords.display()
        ),
        &[tls_port, plain_port],
    );
    let sub = Subscriber::start(plain_port);
    let mqtt = |password: &str| {
        format!(
            "url = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = \"{}\"\nusername = \"kiosk\"\npassword = \"{password}\"",
            ca.display()
        )
    };
    let log = finished(
        daemon(&dir, &mqtt("s3cret"), false),
        Duration::from_secs(180),
    );
    wait_for("the stop event over TLS", Duration::from_secs(5), || {
        sub.on("event").iter().any(|m| m.json()["event"] == "stop")
    });
    let records = records_on_disk(&dir);
    assert_eq!(received_seqs(&sub), expected_seqs(&records), "{log}");
    assert!(log.contains("mqtt: connected to 127.0.0.1"), "{log}");

    // A wrong password: the broker refuses; the run goes on and says so once.
    let before = sub.messages().len();
    let log = finished(
        daemon(&dir, &mqtt("wrong"), false),
        Duration::from_secs(180),
    );
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("mqtt")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("unreachable") && lines[0].contains("127.0.0.1"),
        "{log}"
    );
    assert_eq!(sub.messages().len(), before);
    // Its records wait in the spool for a broker that lets it in.
    assert!(records_on_disk(&dir).len() > records.len());
}

#[test]
fn records_made_while_the_broker_is_down_arrive_in_order_once() {
    let dir = scratch("restart");
    let port = free_port();
    let listeners = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
    let mut broker = Broker::start(&dir, &listeners, &[port]);
    let sub = Subscriber::start(port);
    let child = daemon(&dir, &format!("url = \"mqtt://127.0.0.1:{port}\""), true);
    wait_for(
        "verdicts before the outage",
        Duration::from_secs(120),
        || sub.on("verdict").len() >= 2,
    );
    broker.stop();
    // Records to publish (new tracks, changed verdicts) made while the broker is away.
    let before_outage = expected_seqs(&records_on_disk(&dir)).len();
    wait_for(
        "verdicts made during the outage",
        Duration::from_secs(60),
        || expected_seqs(&records_on_disk(&dir)).len() >= before_outage + 3,
    );
    let conf = broker.conf.clone();
    drop(broker);
    let _broker = Broker::run(conf, &[port]);
    // The daemon reconnects within its back-off (at most 5 s) and publishes the backlog.
    let t0 = Instant::now();
    wait_for("the backlog", Duration::from_secs(30), || {
        let on_disk = expected_seqs(&records_on_disk(&dir));
        let got = received_seqs(&sub);
        got.len() >= on_disk.len() - 1 && t0.elapsed() > Duration::from_secs(2)
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let log = finished(child, Duration::from_secs(10));
    wait_for("the stop event", Duration::from_secs(5), || {
        sub.on("event").iter().any(|m| m.json()["event"] == "stop")
    });
    let records = records_on_disk(&dir);
    let expected = expected_seqs(&records);
    let got = received_seqs(&sub);
    assert_eq!(got, expected, "{log}");
    assert!(
        log.contains("mqtt: broker 127.0.0.1"),
        "the outage is logged: {log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains("mqtt: broker")).count(),
        1,
        "once per outage: {log}"
    );
}
