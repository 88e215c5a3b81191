//! The engine's events folded into the job record's [`Progress`].

use std::sync::{Arc, Mutex};

use job_model::Progress;
use replicator_core::progress::{Event, Observer};

/// The latest progress, updated by the engine's observer and read by the heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Tracker(Arc<Mutex<Progress>>);

impl Tracker {
    /// The progress now.
    pub fn snapshot(&self) -> Progress {
        self.0.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Set the phase by hand (before the engine starts, after it ends).
    pub fn set_phase(&self, phase: &str) {
        if let Ok(mut p) = self.0.lock() {
            phase.clone_into(&mut p.phase);
        }
    }

    /// Start from the warnings an earlier worker of the same job recorded (a resumed job), so
    /// that the record keeps them and a client following it sees each once.
    pub fn carry_warnings(&self, earlier: &[String]) {
        if let Ok(mut p) = self.0.lock() {
            for w in earlier {
                p.add_warning(w);
            }
        }
    }

    /// Fold one event in.
    pub fn apply(&self, event: &Event) {
        let Ok(mut p) = self.0.lock() else { return };
        match event {
            Event::PhaseStarted(phase) => {
                phase.name().clone_into(&mut p.phase);
                if p.phase != "data" {
                    p.current_tables.clear();
                }
            }
            Event::Planned(s) => {
                p.tables_total = s.tables as u64;
                p.bytes_total = s.bytes_estimate;
                p.units_total = s.units as u64;
                p.units_done = s.units_done as u64;
                p.post_items_total = s.post_data_items as u64;
            }
            Event::Progress(d) => {
                p.bytes = d.bytes_copied;
                p.rows = d.rows_copied;
                p.eta_seconds = d.eta_secs;
                p.current_tables.clone_from(&d.active);
                p.units_done = d.units_done as u64;
                p.units_total = d.units_total as u64;
                p.post_items_done = d.post_items_done as u64;
                p.bytes_per_sec = d.bytes_per_sec;
            }
            Event::TableCopied { table, .. } => {
                p.tables_done += 1;
                p.current_tables.retain(|t| t != table);
            }
            Event::Warning(w) => p.add_warning(w),
            Event::Retrying {
                what,
                attempt,
                error,
            } => p.add_retry(what, *attempt, error),
            Event::PhaseFinished(..) => {}
        }
    }

    /// An engine observer that feeds this tracker (and logs what the engine reports).
    pub fn observer(&self) -> Observer {
        let me = self.clone();
        Arc::new(move |e: &Event| {
            match e {
                Event::Retrying {
                    what,
                    attempt,
                    error,
                } => tracing::warn!(%what, attempt, %error, "retrying"),
                Event::Warning(w) => tracing::warn!("{w}"),
                Event::PhaseStarted(p) => tracing::info!(phase = p.name(), "phase started"),
                Event::PhaseFinished(p, d) => {
                    tracing::info!(
                        phase = p.name(),
                        seconds = d.as_secs_f64(),
                        "phase finished"
                    );
                }
                _ => {}
            }
            me.apply(e);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replicator_core::progress::{DataProgress, Phase, PlanSummary};

    #[test]
    fn events_fold_into_progress() {
        let t = Tracker::default();
        t.apply(&Event::PhaseStarted(Phase::Data));
        t.apply(&Event::Planned(PlanSummary {
            tables: 3,
            units: 4,
            units_done: 0,
            bytes_estimate: 1000,
            rows_estimate: 10,
            post_data_items: 2,
        }));
        t.apply(&Event::Progress(DataProgress {
            bytes_copied: 400,
            rows_copied: 4,
            estimate_done: 400,
            estimate_total: 1000,
            units_done: 1,
            units_total: 4,
            post_items_done: 0,
            active: vec!["public.a".into(), "public.b".into()],
            bytes_per_sec: 100,
            eta_secs: Some(6),
        }));
        t.apply(&Event::TableCopied {
            table: "public.a".into(),
            rows: 2,
            bytes: 200,
        });
        let p = t.snapshot();
        assert_eq!(p.phase, "data");
        assert_eq!((p.tables_done, p.tables_total), (1, 3));
        assert_eq!((p.bytes, p.bytes_total, p.rows), (400, 1000, 4));
        assert_eq!(p.eta_seconds, Some(6));
        assert_eq!(p.current_tables, vec!["public.b".to_owned()]);
        assert_eq!((p.units_done, p.units_total, p.post_items_total), (1, 4, 2));
        assert_eq!(p.bytes_per_sec, 100);
        assert!(p.warnings.is_empty());
        t.apply(&Event::Retrying {
            what: "public.t".into(),
            attempt: 2,
            error: "connection reset".into(),
        });
        assert_eq!(t.snapshot().retries.len(), 1);
        assert_eq!(t.snapshot().retries[0].attempt, 2);
        t.apply(&Event::Warning("ended 1 session(s)".into()));
        assert_eq!(t.snapshot().warnings, vec!["ended 1 session(s)".to_owned()]);
        let resumed = Tracker::default();
        resumed.carry_warnings(&t.snapshot().warnings);
        resumed.apply(&Event::Warning("resuming".into()));
        assert_eq!(
            resumed.snapshot().warnings,
            vec!["ended 1 session(s)".to_owned(), "resuming".to_owned()]
        );
    }
}
