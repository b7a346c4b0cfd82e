//! Outputs: the text/JSON report and PNG plots (later: display, LEDs, records).

pub mod canvas;
pub mod plot;
pub mod report;
