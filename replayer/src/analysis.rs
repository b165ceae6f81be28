//! Log analysis: summary statistics of a run.

/// Placeholder.
#[derive(Debug)]
pub struct RunStats {
    /// Events.
    pub events: u64,
}

impl RunStats {
    /// Compute.
    pub fn compute(dir: impl AsRef<std::path::Path>) -> Result<RunStats, deja_recorder::ReadError> {
        let reader = deja_recorder::RunReader::open(dir)?;
        let mut events = 0;
        for event in reader {
            event?;
            events += 1;
        }
        Ok(RunStats { events })
    }
}
