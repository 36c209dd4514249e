//! Ctrl-C, one handling for every long job of the workspace (ablations, pretraining): the first
//! SIGINT/SIGTERM asks long work to stop at the next safe point (between
//! training batches, between runs); the interrupted run leaves no record and is redone next
//! time. A second Ctrl-C exits at once (files are only ever renamed into place, never half
//! written).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Install the handlers once per process (later calls do nothing: registering again would
/// stack handlers, and a first Ctrl-C would then also trip the second one's exit).
pub fn install() {
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // The order matters: the conditional shutdown sees the flag set by an earlier signal.
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag));
            let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
        }
        flag
    });
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::Relaxed))
}
