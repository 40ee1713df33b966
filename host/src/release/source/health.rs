//! What a watcher met last: the error of its failing polls in a row (cleared by a good poll), for
//! `info` (`component.source_error`), beside the log line and `echo_host_source_errors_total`.

use std::sync::Mutex;

/// The failing polls in a row and the last one's error.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceError {
    pub at: String,
    pub message: String,
    pub failures: u32,
}

#[derive(Debug, Default)]
pub struct SourceHealth {
    last: Mutex<Option<SourceError>>,
}

impl SourceHealth {
    /// A poll failed: `failures` in a row, the last with `message` (no credentials in it).
    pub fn failed(&self, failures: u32, message: String) {
        let error = SourceError { at: crate::util::time::now_rfc3339(), message, failures };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// A poll succeeded.
    pub fn ok(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn get(&self) -> Option<SourceError> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
