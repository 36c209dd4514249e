//! Ctrl-C for the runner: the process-wide handling of `vcp_data::interrupt` (one installer for
//! every long job of the workspace, ablations and pretraining alike).

pub use vcp_data::interrupt::{install, requested};
