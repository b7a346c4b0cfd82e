//! The systemd notify protocol (sd_notify): datagrams to $NOTIFY_SOCKET. No libsystemd needed.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends READY=1 / WATCHDOG=1 / STOPPING=1 / STATUS=... when run under `Type=notify`; a no-op
/// when $NOTIFY_SOCKET is unset (run by hand, in tests, under another init).
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
    /// Half of $WATCHDOG_USEC: how often WATCHDOG=1 must be sent.
    pub watchdog_interval: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let path = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|p| !p.is_empty());
        let socket = path.and_then(|p| match UnixDatagram::unbound() {
            Ok(s) => Some((s, p)),
            Err(e) => {
                log::warn!("sd_notify: cannot create socket: {e}");
                None
            }
        });
        let watchdog_interval = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0)
            .map(|us| Duration::from_micros(us / 2));
        Notifier {
            socket,
            watchdog_interval,
        }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    pub fn send(&self, message: &str) {
        let Some((socket, path)) = &self.socket else {
            return;
        };
        let result = if let Some(abstract_name) = path.strip_prefix('@') {
            // Abstract socket namespace (systemd uses it in some setups).
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
                .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
        } else {
            socket.send_to(message.as_bytes(), path)
        };
        if let Err(e) = result {
            log::warn!("sd_notify {path}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("veriface-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), path.display().to_string())),
            watchdog_interval: None,
        };
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
