//! SIGINT / SIGTERM during long jobs: the first signal sets a flag that the training loop checks
//! between steps (the step in progress is abandoned, the last complete checkpoint set stays as it
//! is, the process says how to resume and exits non-zero); a second signal ends the process at
//! once (exit status 130 / 143).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

static SIGNAL: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// Install the handlers (idempotent). Without this call signals keep their default effect.
pub fn install() {
    INSTALL.call_once(|| {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
            // Second signal: exit immediately with 128 + signal.
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone());
            let _ = signal_hook::flag::register(sig, flag);
            // Record which signal arrived (the low-level handler may only touch atomics).
            let _ = unsafe {
                signal_hook::low_level::register(sig, move || {
                    SIGNAL.store(sig as usize, Ordering::SeqCst);
                })
            };
        }
    });
}

/// The signal number received so far, if any.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s as i32),
    }
}

/// The signal's name for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The error a job returns when stopped by a signal; `main` turns it into exit status 128 + n.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Interrupted {
    pub signal: i32,
    pub message: String,
}
