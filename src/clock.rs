//! The two clocks. Durations, throttles and watchdogs use the monotonic one; the wall clock only
//! stamps records, file names and logs. Boards without a battery-backed clock set their wall
//! clock at boot when NTP answers (a jump of years, forwards or back), and nothing may depend on
//! it but the stamp itself.

/// Milliseconds on the monotonic clock since the process first asked, never 0 (0 can then mean
/// "not set", as the stall watchdog's `busy_since` does).
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// Unix time in milliseconds (0 before 1970, which a board without a clock can report).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Both clocks behind one trait, so what stamps records can be given a clock that jumps.
pub trait Clock: Send {
    fn mono_ms(&self) -> u64;
    fn wall_ms(&self) -> u64;
}

/// The real clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn mono_ms(&self) -> u64 {
        mono_ms()
    }
    fn wall_ms(&self) -> u64 {
        wall_ms()
    }
}
