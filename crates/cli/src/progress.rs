//! Drawing the engine's events: indicatif bars on a terminal, a log line every few seconds
//! elsewhere, and the summary at the end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{
    HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle,
};
use replicator_core::progress::{DataProgress, Event, Observer};
use replicator_core::InitReport;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// indicatif bars.
    Bars,
    /// Periodic lines on stderr.
    Log,
    /// Nothing but warnings.
    Quiet,
}

struct State {
    mode: Mode,
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    last_log: Instant,
}

/// The progress display.
pub struct Ui {
    state: Arc<Mutex<State>>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Ui {
    /// A display in `mode`.
    pub fn new(mode: Mode) -> Self {
        let bars = (mode == Mode::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            let main = multi.add(ProgressBar::new(0));
            main.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:>9} [{bar:32}] {percent:>3}% {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            main.set_prefix("preflight");
            let active = multi.add(ProgressBar::new_spinner());
            active.set_style(
                ProgressStyle::with_template("  {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            (multi, main, active)
        });
        Self {
            state: Arc::new(Mutex::new(State {
                mode,
                bars,
                last_log: Instant::now(),
            })),
        }
    }

    /// The callback for the engine.
    pub fn observer(&self) -> Observer {
        let state = self.state.clone();
        Arc::new(move |event: &Event| {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.handle(event);
        })
    }

    /// A line above the bars (or on its own without them).
    pub fn note(&self, line: &str) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.mode != Mode::Quiet {
            s.println(line);
        }
    }

    /// Clear the bars.
    pub fn finish(&self) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, main, active)) = &s.bars {
            active.finish_and_clear();
            main.finish_and_clear();
        }
    }
}

fn progress_line(p: &DataProgress) -> String {
    let pct = (p.estimate_done * 100)
        .checked_div(p.estimate_total)
        .unwrap_or(100);
    let eta = p.eta_secs.map_or_else(
        || "?".into(),
        |s| HumanDuration(Duration::from_secs(s)).to_string(),
    );
    format!(
        "{pct}% · {} rows · {} copied · {}/{} units · {} indexes/constraints · {}/s · ETA {eta}",
        p.rows_copied,
        HumanBytes(p.bytes_copied),
        p.units_done,
        p.units_total,
        p.post_items_done,
        HumanBytes(p.bytes_per_sec),
    )
}

impl State {
    fn handle(&mut self, event: &Event) {
        match (self.mode, event) {
            (_, Event::Warning(w)) => self.println(&format!("warning: {w}")),
            (_, Event::Retrying { what, attempt, error }) => {
                self.println(&format!("retrying {what} (attempt {attempt}): {error}"))
            }
            (Mode::Quiet, _) => {}
            (Mode::Log, Event::PhaseStarted(p)) => eprintln!("{}: started", p.name()),
            (Mode::Log, Event::PhaseFinished(p, d)) => eprintln!("{}: done in {:.1?}", p.name(), d),
            (Mode::Log, Event::Planned(p)) => eprintln!(
                "plan: {} tables in {} units ({} done before), ~{} on disk, {} rows by statistics, {} post-data items",
                p.tables,
                p.units,
                p.units_done,
                HumanBytes(p.bytes_estimate),
                if p.rows_estimate > 0 { format!("~{}", p.rows_estimate) } else { "unknown".into() },
                p.post_data_items
            ),
            (Mode::Log, Event::Progress(p)) if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                eprintln!("data: {}", progress_line(p));
            }
            (Mode::Bars, e) => {
                let Some((_, main, active)) = &self.bars else { return };
                match e {
                    Event::PhaseStarted(p) => {
                        main.set_prefix(p.name());
                        active.set_message("");
                    }
                    Event::Planned(p) => main.set_length(p.bytes_estimate.max(1)),
                    Event::Progress(p) => {
                        main.set_length(p.estimate_total.max(1));
                        main.set_position(p.estimate_done);
                        main.set_message(format!(
                            "{} rows {} {}/{} units",
                            p.rows_copied,
                            HumanBytes(p.bytes_copied),
                            p.units_done,
                            p.units_total
                        ));
                        active.set_message(if p.active.is_empty() {
                            String::new()
                        } else {
                            format!("active: {}", p.active.join(", "))
                        });
                    }
                    Event::PhaseFinished(p, d) => {
                        main.println(format!("{:>24} {:>8.1?}", p.name(), d));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn println(&self, line: &str) {
        match &self.bars {
            Some((multi, _, _)) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

/// The summary after a successful run: totals and time per step.
pub fn print_summary(r: &InitReport) {
    let total: Duration = r.phases.iter().map(|(_, d)| *d).sum();
    eprintln!(
        "done: {} tables, {} rows, {} in {}/{} units, {} post-data items, {} sequences, {} large objects{}",
        r.tables,
        r.rows,
        HumanBytes(r.bytes),
        r.units_run,
        r.units_total,
        r.post_data_items,
        r.sequences,
        r.large_objects,
        match (r.resumed, r.mixed_moments) {
            (true, true) => " (resumed: not one consistent snapshot)",
            (true, false) => " (resumed, brought to one snapshot)",
            _ => "",
        }
    );
    eprintln!("{:<24} {:>10}", "step", "seconds");
    for (phase, d) in &r.phases {
        eprintln!("{:<24} {:>10.2}", phase.name(), d.as_secs_f64());
    }
    eprintln!("{:<24} {:>10.2}", "total", total.as_secs_f64());
    if let Some(sync) = &r.to_result().replication {
        eprintln!("{}", replicating_line(sync));
    }
}

/// The line that says replication runs, after a local or a remote `init`.
pub fn replicating_line(sync: &job_model::report::ReplicationResult) -> String {
    format!(
        "replicating: the target's subscription {} applies the source's changes from {} on \
         ({} tables); `status` shows the lag, `verify` compares, `sync --stop` ends it",
        sync.subscription, sync.consistent_point, sync.published_tables
    )
}
