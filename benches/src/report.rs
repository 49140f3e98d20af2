//! What a scenario produced, and the markdown table the README quotes.

use std::fmt::Write;

use crate::stats::{Sample, Target};

/// A peer's side of a comparison and the bound rkt's median must keep to it.
pub struct Side {
    pub sample: Sample,
    pub target: Option<Target>,
}

pub enum Outcome {
    /// rkt's sample (`subject`) next to each peer's; every ratio is rkt ÷ that peer.
    Compared {
        scenario: String,
        subject: Sample,
        peers: Vec<Side>,
        notes: Vec<String>,
    },
    Skipped {
        scenario: String,
        reason: String,
    },
}

pub fn markdown(outcomes: &[Outcome]) -> String {
    let mut table = String::from(
        "| scenario | command | median | min | max | rkt ÷ this | target |\n|---|---|---|---|---|---|---|\n",
    );
    let mut notes = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Skipped { scenario, reason } => {
                let _ = writeln!(table, "| {scenario} | — | | | | | {reason} |");
            }
            Outcome::Compared {
                scenario,
                subject,
                peers,
                notes: own,
            } => {
                let _ = writeln!(table, "| {scenario} | {} | — | |", row(subject));
                for peer in peers {
                    let ratio = subject.ratio_to(&peer.sample);
                    let ratio_text = ratio.map_or("—".to_string(), |r| format!("{r:.2}x"));
                    let verdict = match (peer.target, ratio) {
                        (Some(target), Some(r)) => target.verdict(r),
                        (Some(target), None) => format!("{}: not measured", target.describe()),
                        (None, _) => String::new(),
                    };
                    let _ = writeln!(table, "| | {} | {ratio_text} | {verdict} |", row(&peer.sample));
                }
                notes.extend(own.iter().cloned());
            }
        }
    }
    if !notes.is_empty() {
        table.push('\n');
        for note in notes {
            let _ = writeln!(table, "- {note}");
        }
    }
    table
}

/// `command | median | min | max` of one sample.
fn row(sample: &Sample) -> String {
    let show = |v: Option<f64>| v.map_or("—".to_string(), |v| sample.unit.format(v));
    format!(
        "{} | {} | {} | {}",
        sample.label,
        show(sample.median()),
        show(sample.min()),
        show(sample.max())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Unit;

    fn sample(label: &str, values: &[f64]) -> Sample {
        let mut s = Sample::new(label, Unit::Millis);
        values.iter().for_each(|v| s.push(*v));
        s
    }

    #[test]
    fn table_has_ratios_and_verdicts_per_peer() {
        let outcomes = [
            Outcome::Compared {
                scenario: "fly".into(),
                subject: sample("`rkt run`", &[4.0, 3.0, 5.0]),
                peers: vec![
                    Side {
                        sample: sample("`unshare`", &[2.0, 2.0, 3.0]),
                        target: Some(Target::AtMost(2.0)),
                    },
                    Side {
                        sample: sample("`crun run`", &[]),
                        target: Some(Target::Below(0.5)),
                    },
                ],
                notes: vec!["a note".into()],
            },
            Outcome::Skipped {
                scenario: "nspawn".into(),
                reason: "skipped: nspawn stage1 not in this build".into(),
            },
        ];
        let text = markdown(&outcomes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            "| fly | `rkt run` | 4.00 ms | 3.00 ms | 5.00 ms | — | |"
        );
        assert_eq!(
            lines[3],
            "| | `unshare` | 2.00 ms | 2.00 ms | 3.00 ms | 2.00x | ≤ 2x: met |"
        );
        assert_eq!(
            lines[4],
            "| | `crun run` | — | — | — | — | < 0.5x: not measured |"
        );
        assert_eq!(
            lines[5],
            "| nspawn | — | | | | | skipped: nspawn stage1 not in this build |"
        );
        assert_eq!(lines[7], "- a note");
    }
}
