//! Decisions in words: what `yijian-gateway rules explain` prints and what logs show.

use super::{Action, Explanation, RuleRef};
use std::fmt;

/// `rescue request, priority emergency, tags wheelchair_accessible` or `cancel the device's
/// open request`.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Request {
                service,
                priority,
                tags,
            } => {
                write!(f, "{service} request, priority {priority}")?;
                if !tags.is_empty() {
                    write!(f, ", tags {}", tags.join(", "))?;
                }
                Ok(())
            }
            Action::Cancel => f.write_str("cancel the device's open request"),
        }
    }
}

/// `rule "name" (file:line)` or `fallback "name" (file:line)`.
impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.fallback { "fallback" } else { "rule" };
        write!(f, "{kind} {:?} ({}:{})", self.name, self.file, self.line)
    }
}

/// ```text
/// decision: taxi request, priority routine
///       by: rule "one-button: double press calls a taxi" (rules/default.toml:20)
///
/// 1 earlier rule did not match:
///   rule "one-button: single press is an emergency" (rules/default.toml:12)
///     - gesture is double, rule wants single
/// ```
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decision: {}", self.decision.action)?;
        write!(f, "      by: {}", self.decision.rule)?;
        if self.decision.rule.fallback {
            write!(f, ", because no rule matched")?;
        }
        match self.skipped.len() {
            0 => return writeln!(f, "\n\nit is the first rule: nothing was skipped"),
            1 => writeln!(f, "\n\n1 earlier rule did not match:")?,
            n => writeln!(f, "\n\n{n} earlier rules did not match:")?,
        }
        for (rule, why) in &self.skipped {
            writeln!(f, "  {rule}")?;
            for reason in why.split("; ") {
                writeln!(f, "    - {reason}")?;
            }
        }
        Ok(())
    }
}
