//! The local API (room for the kiosk app's socket and HTTP interface): beside the daemon at the
//! top, it drives the pipeline and reads results; nothing below imports it. Nothing lives here
//! yet.
