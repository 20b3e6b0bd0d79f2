//! Hot reload: a changed rules directory becomes the live rule set without a restart, or is
//! refused whole.
//!
//! ```text
//! SIGHUP ─────────────┐
//! files changed ──────┴─▶ read every file ─▶ check ─▶ ok: swap the Arc (intake sees old or new)
//!  (polled, stable for                              └▶ errors: keep the old set, log, count
//!   two polls in a row)
//! ```
//!
//! Intake clones the `Arc<RuleSet>` under a read lock for each press, so a press is always
//! evaluated against one complete set: the lock only guards the pointer swap. The directory is
//! read twice in a row and only an identical pair is checked, so a set being swapped on disk
//! while it is read (a symlink flipped, files renamed into place) is not mistaken for a rule
//! set nobody wrote.

use super::{read_dir_sources, CheckFailed, RuleSet, Sources};
use crate::telemetry;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The live rule set, as intake reads it.
pub type LiveRules = Arc<RwLock<Arc<RuleSet>>>;

/// What one reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The new set is live.
    Loaded {
        /// Rules in it (not counting the fallback).
        rules: usize,
        /// Its files, in load order.
        files: Vec<String>,
        /// Warnings it passed with.
        warnings: usize,
    },
    /// The files failed their check (or could not be read); the old set stays.
    Refused(String),
    /// The gateway runs on the built-in rules: there is no directory to reload.
    Builtin,
}

/// Reload counters, published on a watch channel so tests and the API wait for a reload
/// instead of sleeping.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Reloads attempted (SIGHUP, file changes, API), whatever their outcome.
    pub attempts: u64,
    /// Rule sets swapped in since start.
    pub generation: u64,
    /// The last attempt's outcome.
    pub last: Option<Outcome>,
}

/// Owns the live rule set and replaces it.
pub struct Reloader {
    dir: Option<PathBuf>,
    live: LiveRules,
    /// The sources of the last set tried (loaded or refused): the watcher only reacts to
    /// something new.
    tried: Mutex<Option<Sources>>,
    /// Held for a whole reload, so SIGHUP and the watcher never interleave their swaps.
    busy: Mutex<()>,
    status: watch::Sender<Status>,
}

/// How often the directory is re-read when a torn read is suspected.
const STABLE_READS: usize = 5;

impl Reloader {
    /// Load the set in `dir` (or the built-in rules when `None`); fails when it does not pass
    /// its check. Warnings are logged.
    pub fn start(dir: Option<PathBuf>) -> Result<(Arc<Reloader>, String), CheckFailed> {
        let (set, sources, desc) = match &dir {
            Some(d) => {
                let sources = stable_sources(d)?;
                let loaded = RuleSet::check_sources(&d.display().to_string(), &sources)?;
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                let desc = format!(
                    "{} rules from {} ({})",
                    loaded.set.len(),
                    d.display(),
                    loaded.set.files().join(", ")
                );
                (loaded.set, Some(sources), desc)
            }
            None => {
                let set = RuleSet::default_set();
                let desc = format!("{} built-in rules (no ./rules directory)", set.len());
                (set, None, desc)
            }
        };
        let reloader = Reloader {
            dir,
            live: Arc::new(RwLock::new(Arc::new(set))),
            tried: Mutex::new(sources),
            busy: Mutex::new(()),
            status: watch::Sender::new(Status::default()),
        };
        Ok((Arc::new(reloader), desc))
    }

    /// The live set, shared with intake.
    pub fn live(&self) -> LiveRules {
        self.live.clone()
    }

    /// The set a press would be evaluated against now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.live
            .read()
            .expect("rules lock is never poisoned")
            .clone()
    }

    /// Reload counters; `changed()` wakes on every attempt.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Read, check and swap in the directory's rules now (SIGHUP). `why` is logged.
    pub fn reload(&self, why: &str) -> Outcome {
        let _busy = self.busy.lock().expect("reload lock is never poisoned");
        let Some(dir) = &self.dir else {
            tracing::info!(
                trigger = why,
                "rules reload asked for, but the gateway runs on the built-in rules"
            );
            return self.record(Outcome::Builtin);
        };
        match stable_sources(dir) {
            Ok(sources) => self.apply(dir, sources, why),
            Err(failed) => self.refuse(failed, why),
        }
    }

    /// Check `sources` and swap them in, or refuse them.
    fn apply(&self, dir: &std::path::Path, sources: Sources, why: &str) -> Outcome {
        *self.tried.lock().expect("reload lock is never poisoned") = Some(sources.clone());
        match RuleSet::check_sources(&dir.display().to_string(), &sources) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                let outcome = Outcome::Loaded {
                    rules: loaded.set.len(),
                    files: loaded.set.files().to_vec(),
                    warnings: loaded.warnings.len(),
                };
                // The whole set is built before this line; the swap is one pointer store.
                *self.live.write().expect("rules lock is never poisoned") = Arc::new(loaded.set);
                telemetry::rules_reload("ok");
                tracing::info!(trigger = why, rules = %describe(&outcome), "rules reloaded");
                self.status.send_modify(|s| s.generation += 1);
                self.record(outcome)
            }
            Err(failed) => self.refuse(failed, why),
        }
    }

    fn refuse(&self, failed: CheckFailed, why: &str) -> Outcome {
        telemetry::rules_reload("invalid");
        tracing::error!(
            trigger = why,
            errors = failed.errors.len(),
            "rules reload refused; the previous rules stay in force:\n{failed}"
        );
        self.record(Outcome::Refused(failed.to_string()))
    }

    fn record(&self, outcome: Outcome) -> Outcome {
        self.status.send_modify(|s| {
            s.attempts += 1;
            s.last = Some(outcome.clone());
        });
        outcome
    }

    /// One poll of the watcher: reload when the files differ from the last set tried and have
    /// read the same as at the previous poll (an editor has finished writing).
    fn poll(&self, previous: &mut Option<Sources>) {
        let Some(dir) = &self.dir else { return };
        let _busy = self.busy.lock().expect("reload lock is never poisoned");
        let now = match read_dir_sources(dir) {
            Ok(s) => s,
            // An empty or vanished directory is refused once, when it has stayed that way.
            Err(failed) => {
                let marker = vec![(dir.display().to_string(), Err(failed.to_string()))];
                if previous.as_ref() == Some(&marker)
                    && self
                        .tried
                        .lock()
                        .expect("reload lock is never poisoned")
                        .as_ref()
                        != Some(&marker)
                {
                    *self.tried.lock().expect("reload lock is never poisoned") =
                        Some(marker.clone());
                    self.refuse(failed, "files changed");
                }
                *previous = Some(marker);
                return;
            }
        };
        let stable = previous.as_ref() == Some(&now);
        let new = self
            .tried
            .lock()
            .expect("reload lock is never poisoned")
            .as_ref()
            != Some(&now);
        if stable && new {
            self.apply(dir, now.clone(), "files changed");
        }
        *previous = Some(now);
    }
}

/// Read the directory until two reads in a row agree (or give up and take the last).
fn stable_sources(dir: &std::path::Path) -> Result<Sources, CheckFailed> {
    let mut last = read_dir_sources(dir)?;
    for _ in 0..STABLE_READS {
        let again = read_dir_sources(dir)?;
        if again == last {
            return Ok(again);
        }
        last = again;
    }
    Ok(last)
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Loaded {
            rules,
            files,
            warnings,
        } => {
            format!(
                "{rules} rules from {} ({warnings} warnings)",
                files.join(", ")
            )
        }
        Outcome::Refused(why) => format!("refused: {why}"),
        Outcome::Builtin => "built-in".into(),
    }
}

/// Watch the rules directory every `every` (when non-zero) until `shutdown`. Reading a few
/// small files a second is cheaper and more portable than file-system notifications, and
/// sees a symlinked directory being swapped.
pub fn watch(
    reloader: Arc<Reloader>,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if every.is_zero() || reloader.dir.is_none() {
            return;
        }
        let mut previous = reloader
            .tried
            .lock()
            .expect("reload lock is never poisoned")
            .clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let r = reloader.clone();
            let prev = std::mem::take(&mut previous);
            match tokio::task::spawn_blocking(move || {
                let mut prev = prev;
                r.poll(&mut prev);
                prev
            })
            .await
            {
                Ok(p) => previous = p,
                Err(e) => tracing::error!(error = %e, "rules watcher poll failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FALLBACK: &str = "[fallback]\nservice = \"rescue\"\npriority = \"urgent\"\n";

    fn rule(name: &str) -> String {
        format!("[[rule]]\nname = \"{name}\"\ngesture = \"double\"\nservice = \"taxi\"\npriority = \"routine\"\n\n{FALLBACK}")
    }

    fn first_rule(r: &Reloader) -> String {
        let set = r.current();
        let attrs = Default::default();
        let ctx = crate::rules::PressContext {
            profile: "one-button",
            button: "main",
            gesture: yijian_wire::Gesture::Double,
            local_minutes: None,
            attributes: &attrs,
        };
        set.evaluate(&ctx).rule.name.to_string()
    }

    #[test]
    fn the_watcher_waits_for_files_to_settle_and_refuses_a_bad_set_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rules.toml");
        std::fs::write(&file, rule("one")).expect("write");
        let (r, _) = Reloader::start(Some(dir.path().to_owned())).expect("valid set");
        let mut previous = r.tried.lock().unwrap().clone();

        r.poll(&mut previous);
        assert_eq!(
            r.subscribe().borrow().attempts,
            0,
            "nothing changed, nothing done"
        );

        std::fs::write(&file, rule("two")).expect("write");
        r.poll(&mut previous);
        assert_eq!(
            first_rule(&r),
            "one",
            "a change seen once may still be being written"
        );
        r.poll(&mut previous);
        assert_eq!(first_rule(&r), "two", "seen twice the same: loaded");
        assert_eq!(r.subscribe().borrow().generation, 1);

        std::fs::write(&file, "[[rule]]\nname = \"three\"\n").expect("write");
        r.poll(&mut previous);
        r.poll(&mut previous);
        r.poll(&mut previous);
        let status = r.subscribe().borrow().clone();
        assert_eq!(
            status.attempts, 2,
            "refused once, not at every poll: {status:?}"
        );
        assert!(
            matches!(status.last, Some(Outcome::Refused(ref why)) if why.contains("rule \"three\"")),
            "{status:?}"
        );
        assert_eq!(first_rule(&r), "two", "the old set stays");

        // SIGHUP reloads even what the watcher has already seen.
        std::fs::write(&file, rule("four")).expect("write");
        assert!(matches!(r.reload("test"), Outcome::Loaded { rules: 1, .. }));
        assert_eq!(first_rule(&r), "four");
        r.poll(&mut previous);
        r.poll(&mut previous);
        assert_eq!(
            r.subscribe().borrow().generation,
            2,
            "the watcher does not load it a second time"
        );
    }

    #[test]
    fn builtin_rules_have_nothing_to_reload() {
        let (r, desc) = Reloader::start(None).expect("built-in rules");
        assert!(desc.contains("built-in"), "{desc}");
        assert_eq!(r.reload("test"), Outcome::Builtin);
    }
}
