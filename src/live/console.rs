//! The live run's browser console: started beside the results server when `[live] web` names an address, fed the
//! run's counters twice a second, and given the final summary at the end. A console that cannot start (its port
//! taken) is said and the session goes on without it: a browser is never a reason to lose a scan.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::stats::{LiveStats, SessionView};
use crate::config::LiveConfig;
use crate::web::WebConsole;

/// What the console is told of the session besides the counters.
#[derive(Clone)]
struct SessionFacts {
    session: String,
    started: Instant,
    tr_secs: f64,
    feedback_attribute: String,
}

impl SessionFacts {
    fn summary(&self, stats: &LiveStats, ended: bool) -> serde_json::Value {
        stats.web_summary(&SessionView {
            session: &self.session,
            started: self.started,
            tr_secs: self.tr_secs,
            feedback_attribute: &self.feedback_attribute,
            ended,
        })
    }
}

/// The running console and what it says of the session.
pub(super) struct LiveConsole {
    console: WebConsole,
    facts: SessionFacts,
}

impl LiveConsole {
    /// Starts the console `config.web` names (none when "off", or when it cannot start: said, and the run goes on).
    pub(super) fn start(
        config: &LiveConfig,
        stats: &Arc<Mutex<LiveStats>>,
        session_dir: &Path,
        tr_secs: f64,
    ) -> Option<LiveConsole> {
        let address = match config.web_address() {
            Ok(Some(address)) => address,
            Ok(None) => return None,
            Err(problem) => {
                tracing::error!("live.web: {problem}; no web console this session");
                return None;
            }
        };
        let facts = SessionFacts {
            session: session_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            started: Instant::now(),
            tr_secs,
            feedback_attribute: config.feedback_attribute.clone(),
        };
        let (source_stats, source_facts) = (stats.clone(), facts.clone());
        let summary = Box::new(move || {
            source_stats
                .lock()
                .map(|s| source_facts.summary(&s, false))
                .unwrap_or(serde_json::Value::Null)
        });
        match WebConsole::start(address, config.web_token.as_deref(), summary) {
            Ok(console) => {
                tracing::info!("web console on {}", console.address);
                println!("web console      {}", console.url);
                Some(LiveConsole { console, facts })
            }
            Err(e) => {
                tracing::error!(
                    "{e}; the session goes on without it (choose another with --web ADDR:PORT)"
                );
                None
            }
        }
    }

    pub(super) fn feed(&self) -> crate::web::WebFeed {
        self.console.feed()
    }

    /// Sends the browsers the last frame and the final summary, then closes.
    pub(super) fn finish(self, stats: &LiveStats) {
        self.console.finish(self.facts.summary(stats, true));
    }
}
