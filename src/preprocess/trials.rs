//! Trial patterns: the average of the preprocessed volumes acquired within `[onset + delay_start, onset +
//! delay_end]` of each stimulus, emitted as soon as the last of them has arrived. Used identically live (onsets
//! from an events file or arriving on a socket) and offline (decoder training).
//!
//! Default window 4.5 to 9 s: the canonical HRF to HYPER's 1.5 s stimulus peaks about 6 s after onset and stays
//! above half its peak from about 3.5 to 9 s; starting at 4.5 s keeps most of the previous trial's response (onset
//! 4.5 s earlier, so past its peak) out, and the window holds three volumes at TR 1.5 s.

use std::collections::BTreeMap;
use std::path::Path;

/// The averaging window relative to onset.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrialWindow {
    pub delay_start_secs: f64,
    pub delay_end_secs: f64,
}

impl Default for TrialWindow {
    fn default() -> Self {
        TrialWindow {
            delay_start_secs: 4.5,
            delay_end_secs: 9.0,
        }
    }
}

impl TrialWindow {
    /// Indices of the volumes (acquired at index x TR) inside the window of `onset_secs`.
    pub fn volumes(&self, onset_secs: f64, tr_secs: f64) -> std::ops::RangeInclusive<usize> {
        let first = ((onset_secs + self.delay_start_secs) / tr_secs - 1e-9)
            .ceil()
            .max(0.0) as usize;
        let last = ((onset_secs + self.delay_end_secs) / tr_secs + 1e-9)
            .floor()
            .max(0.0) as usize;
        first..=last
    }
}

/// One stimulus presentation from a schedule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScheduledTrial {
    /// Position in the schedule (0-based).
    pub index: usize,
    pub onset_secs: f64,
    pub duration_secs: f64,
    pub trial_type: String,
    pub stim_id: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

/// Reads a BIDS `_events.tsv` (`onset`, `duration`, `trial_type`, optional `stim_id`). Onsets must increase and,
/// when `run_secs` is given, lie within the run.
pub fn read_events(path: &Path, run_secs: Option<f64>) -> Result<Vec<ScheduledTrial>, EventsError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| EventsError::Io {
        path: name.clone(),
        source,
    })?;
    parse_events(&text, &name, run_secs)
}

/// Parses events text; `name` is used in errors.
pub fn parse_events(
    text: &str,
    name: &str,
    run_secs: Option<f64>,
) -> Result<Vec<ScheduledTrial>, EventsError> {
    let invalid = |line: usize, message: String| EventsError::Invalid {
        path: name.to_string(),
        line,
        message,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| {
        invalid(
            1,
            "empty file: expected a header with onset, duration".into(),
        )
    })?;
    let columns: Vec<&str> = header.split('\t').map(str::trim).collect();
    let col = |want: &str| columns.iter().position(|c| *c == want);
    let onset_col = col("onset")
        .ok_or_else(|| invalid(1, format!("no `onset` column in header {columns:?}")))?;
    let duration_col = col("duration")
        .ok_or_else(|| invalid(1, format!("no `duration` column in header {columns:?}")))?;
    let (type_col, stim_col) = (col("trial_type"), col("stim_id"));
    let mut trials: Vec<ScheduledTrial> = Vec::new();
    for (i, line) in lines {
        let line_no = i + 1;
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        let field = |c: usize, what: &str| {
            fields
                .get(c)
                .copied()
                .ok_or_else(|| invalid(line_no, format!("missing {what} field")))
        };
        let number = |c: usize, what: &str| -> Result<f64, EventsError> {
            let f = field(c, what)?;
            f.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| invalid(line_no, format!("{what} {f:?} is not a number")))
        };
        let onset = number(onset_col, "onset")?;
        let duration = number(duration_col, "duration")?;
        if onset < 0.0 || duration < 0.0 {
            return Err(invalid(
                line_no,
                format!("onset {onset} and duration {duration} must not be negative"),
            ));
        }
        if let Some(prev) = trials.last() {
            if onset < prev.onset_secs {
                return Err(invalid(line_no, format!("onset {onset} s comes before the previous onset {} s (onsets must be in order)", prev.onset_secs)));
            }
        }
        if let Some(run) = run_secs {
            if onset >= run {
                return Err(invalid(
                    line_no,
                    format!("onset {onset} s is beyond the run's {run} s"),
                ));
            }
        }
        let stim_id = match stim_col {
            Some(c) => {
                let f = field(c, "stim_id")?;
                if f == "n/a" {
                    None
                } else {
                    Some(f.parse::<usize>().map_err(|_| {
                        invalid(
                            line_no,
                            format!("stim_id {f:?} is not a non-negative integer"),
                        )
                    })?)
                }
            }
            None => None,
        };
        let trial_type = match type_col {
            Some(c) => field(c, "trial_type")?.to_string(),
            None => String::new(),
        };
        trials.push(ScheduledTrial {
            index: trials.len(),
            onset_secs: onset,
            duration_secs: duration,
            trial_type,
            stim_id,
        });
    }
    Ok(trials)
}

/// A finished trial pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialPattern {
    pub trial: ScheduledTrial,
    /// Mean of the window's volumes (masked, preprocessed values).
    pub pattern: Vec<f32>,
    /// The volume indices averaged.
    pub volumes: Vec<usize>,
    /// False when the run ended before the window did (the pattern averages what there was).
    pub complete: bool,
}

/// Collects volumes into trial windows. Volumes may arrive in any order; each pattern sums its volumes in
/// index order, so live and offline processing give bit-identical patterns.
pub struct TrialAverager {
    window: TrialWindow,
    tr_secs: f64,
    pending: Vec<ScheduledTrial>,
    /// Volumes still needed by a pending trial.
    held: BTreeMap<usize, Vec<f32>>,
}

impl TrialAverager {
    pub fn new(window: TrialWindow, tr_secs: f64) -> TrialAverager {
        TrialAverager {
            window,
            tr_secs,
            pending: Vec::new(),
            held: BTreeMap::new(),
        }
    }

    /// Adds a trial to wait for (from the schedule, or an onset arriving live).
    pub fn add_trial(&mut self, trial: ScheduledTrial) {
        self.pending.push(trial);
    }

    /// Offers one preprocessed volume; returns the trials it completes.
    pub fn push_volume(&mut self, index: usize, values: &[f32]) -> Vec<TrialPattern> {
        let needed = self.pending.iter().any(|t| {
            self.window
                .volumes(t.onset_secs, self.tr_secs)
                .contains(&index)
        });
        if needed {
            self.held.insert(index, values.to_vec());
        }
        let mut done = Vec::new();
        let mut still = Vec::new();
        for trial in std::mem::take(&mut self.pending) {
            let range = self.window.volumes(trial.onset_secs, self.tr_secs);
            if range.clone().all(|v| self.held.contains_key(&v)) {
                done.push(self.average(trial, range, true));
            } else {
                still.push(trial);
            }
        }
        self.pending = still;
        self.release();
        done
    }

    /// Ends the run: pending trials are emitted with the volumes they have (flagged incomplete) or dropped when
    /// they have none.
    pub fn finish(&mut self) -> Vec<TrialPattern> {
        let pending = std::mem::take(&mut self.pending);
        let out = pending
            .into_iter()
            .filter_map(|trial| {
                let range = self.window.volumes(trial.onset_secs, self.tr_secs);
                let have: Vec<usize> = range.filter(|v| self.held.contains_key(v)).collect();
                (!have.is_empty()).then(|| {
                    self.average(
                        trial,
                        *have.first().unwrap_or(&0)..=*have.last().unwrap_or(&0),
                        false,
                    )
                })
            })
            .collect();
        self.held.clear();
        out
    }

    fn average(
        &self,
        trial: ScheduledTrial,
        range: std::ops::RangeInclusive<usize>,
        complete: bool,
    ) -> TrialPattern {
        let volumes: Vec<usize> = range.filter(|v| self.held.contains_key(v)).collect();
        let n = self
            .held
            .get(volumes.first().unwrap_or(&0))
            .map(|v| v.len())
            .unwrap_or(0);
        let mut pattern = vec![0.0f32; n];
        for v in &volumes {
            if let Some(values) = self.held.get(v) {
                for (p, x) in pattern.iter_mut().zip(values) {
                    *p += x;
                }
            }
        }
        let count = volumes.len().max(1) as f32;
        for p in pattern.iter_mut() {
            *p /= count;
        }
        TrialPattern {
            trial,
            pattern,
            volumes,
            complete,
        }
    }

    /// Drops held volumes no pending trial needs.
    fn release(&mut self) {
        let keep: std::collections::BTreeSet<usize> = self
            .pending
            .iter()
            .flat_map(|t| self.window.volumes(t.onset_secs, self.tr_secs))
            .collect();
        self.held.retain(|k, _| keep.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_picks_the_volumes_4_5_to_9_s_after_onset() {
        let w = TrialWindow::default();
        assert_eq!(w.volumes(6.0, 1.5), 7..=10); // 10.5 s .. 15 s
        assert_eq!(w.volumes(0.0, 2.0), 3..=4);
    }

    #[test]
    fn patterns_are_identical_whatever_the_arrival_order() {
        let trial = |i: usize, onset: f64| ScheduledTrial {
            index: i,
            onset_secs: onset,
            duration_secs: 1.5,
            trial_type: "test".into(),
            stim_id: Some(i),
        };
        let volume = |t: usize| vec![t as f32 * 0.1 + 0.3, (t as f32).sin()];
        let run = |order: &[usize]| {
            let mut a = TrialAverager::new(TrialWindow::default(), 1.5);
            a.add_trial(trial(0, 0.0));
            a.add_trial(trial(1, 4.5));
            let mut out = Vec::new();
            for &t in order {
                out.extend(a.push_volume(t, &volume(t)));
            }
            out.sort_by_key(|p| p.trial.index);
            out
        };
        let forward = run(&(0..12).collect::<Vec<_>>());
        let shuffled = run(&[5, 0, 3, 11, 1, 2, 4, 6, 10, 9, 8, 7]);
        assert_eq!(forward.len(), 2);
        assert_eq!(forward, shuffled);
        assert_eq!(forward[0].volumes, vec![3, 4, 5, 6]);
    }

    #[test]
    fn bad_events_name_the_line() {
        let err = parse_events(
            "onset\tduration\ttrial_type\tstim_id\n1.0\t1.5\ttrain\t0\n0.5\t1.5\ttrain\t1\n",
            "e.tsv",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("e.tsv line 3") && err.contains("in order"),
            "{err}"
        );
        let err = parse_events("onset\tduration\n500\t1.5\n", "e.tsv", Some(300.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("beyond"), "{err}");
        let err = parse_events("onset\tduration\tstim_id\n1\t1.5\tx\n", "e.tsv", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stim_id"), "{err}");
        let err = parse_events("time\tduration\n", "e.tsv", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("onset"), "{err}");
    }
}
