//! The live outputs' interface: what a running camera loop tells its display, LEDs and records.

use anyhow::Result;

use crate::source::camera::CameraState;
use crate::verdict::FrameResult;

/// Something the live outputs (display, LEDs, records) are told; each call must be cheap and
/// never block the caller's loop for long.
pub trait Output {
    fn name(&self) -> String;
    /// A frame was analysed.
    fn frame(&mut self, view: &LiveView) -> Result<()>;
    /// The camera changed state, or the daemon started or is stopping.
    fn event(&mut self, event: &DaemonEvent) -> Result<()>;
    /// Switch off (LEDs dark, display cleared, records flushed). Called on every exit path.
    fn shutdown(&mut self) -> Result<()>;
}

#[derive(Clone, Debug, PartialEq)]
pub enum DaemonEvent {
    Started {
        device_id: String,
        models: Vec<(String, String)>,
    },
    CameraLost(String),
    CameraBack(String),
    Stopping,
    /// A verification session began: the person is asked to look at the camera.
    SessionStarted,
    /// Single-face frames the session has, and how many its decision needs.
    SessionProgress {
        frames: usize,
        needed: usize,
    },
    /// The active challenge's instruction now on screen.
    SessionPrompt(String),
    SessionEnded(Box<SessionEnd>),
}

/// How long a session's decision stays on the screen and the LEDs before the live verdict
/// returns.
pub const SESSION_HOLD: std::time::Duration = std::time::Duration::from_secs(3);

/// How a verification session ended, for the outputs (records keep it, the screen and LEDs
/// show it).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionEnd {
    pub outcome: crate::verdict::session::Outcome,
    pub duration_s: f64,
    /// sha256 (hex) of the embedding model.
    pub embedding_model: String,
    /// The session face's embedding, only where the operator opted in to storing it.
    pub embedding: Option<Vec<f32>>,
}

/// What outputs see after each analysed frame.
pub struct LiveView<'a> {
    pub result: &'a FrameResult,
    pub emotion_classes: &'a [String],
    pub camera: &'a CameraState,
    pub fps: f64,
    pub wall_ms: u64,
    pub mono_ms: u64,
}
