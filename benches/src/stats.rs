//! Summary statistics of a benchmark side and the ratios the targets are read from.
//!
//! Medians, not means: on a shared 2-core machine a few runs land behind another
//! process's burst, and the median is what a user sees typically.

/// What a sample's values measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Millis,
    KiB,
}

impl Unit {
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Millis if value >= 1000.0 => format!("{:.2} s", value / 1000.0),
            Unit::Millis => format!("{value:.2} ms"),
            Unit::KiB => format!("{:.1} MB", value / 1024.0),
        }
    }
}

/// The values one side of a scenario produced, in the order they were taken.
#[derive(Debug, Clone)]
pub struct Sample {
    pub label: String,
    pub unit: Unit,
    pub values: Vec<f64>,
}

impl Sample {
    pub fn new(label: impl Into<String>, unit: Unit) -> Self {
        Sample {
            label: label.into(),
            unit,
            values: Vec::new(),
        }
    }

    pub fn push(&mut self, value: f64) {
        self.values.push(value);
    }

    pub fn median(&self) -> Option<f64> {
        median(&self.values)
    }

    pub fn min(&self) -> Option<f64> {
        self.values.iter().copied().reduce(f64::min)
    }

    pub fn max(&self) -> Option<f64> {
        self.values.iter().copied().reduce(f64::max)
    }

    /// This side's median over `other`'s: 2.0 means twice the time (or memory).
    pub fn ratio_to(&self, other: &Sample) -> Option<f64> {
        ratio(self.median()?, other.median()?)
    }
}

/// The middle value; the mean of the two middle ones for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// `a / b`, or `None` when `b` is zero (a ratio to nothing means nothing).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b != 0.0).then(|| a / b)
}

/// A bound on the ratio of rkt's median to a peer's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    AtMost(f64),
    Below(f64),
}

impl Target {
    pub fn met_by(self, ratio: f64) -> bool {
        match self {
            Target::AtMost(bound) => ratio <= bound,
            Target::Below(bound) => ratio < bound,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Target::AtMost(bound) => format!("≤ {bound}x"),
            Target::Below(bound) => format!("< {bound}x"),
        }
    }

    /// "≤ 2x: met" / "< 0.5x: missed (0.71x)".
    pub fn verdict(self, ratio: f64) -> String {
        if self.met_by(ratio) {
            format!("{}: met", self.describe())
        } else {
            format!("{}: **missed** ({ratio:.2}x)", self.describe())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_count_is_the_middle_value() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn median_ignores_nan_and_is_none_when_empty() {
        assert_eq!(median(&[f64::NAN, 7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn min_max_and_ratio_of_samples() {
        let mut rkt = Sample::new("rkt", Unit::Millis);
        let mut peer = Sample::new("peer", Unit::Millis);
        for v in [3.0, 9.0, 4.0] {
            rkt.push(v);
        }
        for v in [2.0, 2.0, 1.0] {
            peer.push(v);
        }
        assert_eq!(rkt.min(), Some(3.0));
        assert_eq!(rkt.max(), Some(9.0));
        assert_eq!(rkt.ratio_to(&peer), Some(2.0));
        assert_eq!(Sample::new("empty", Unit::KiB).ratio_to(&peer), None);
        assert_eq!(ratio(1.0, 0.0), None);
    }

    #[test]
    fn targets_distinguish_at_most_from_below() {
        assert!(Target::AtMost(2.0).met_by(2.0));
        assert!(!Target::Below(0.5).met_by(0.5));
        assert_eq!(Target::AtMost(2.0).verdict(1.62), "≤ 2x: met");
        assert_eq!(Target::Below(0.5).verdict(0.71), "< 0.5x: **missed** (0.71x)");
    }

    #[test]
    fn units_format_for_the_table() {
        assert_eq!(Unit::Millis.format(3.456), "3.46 ms");
        assert_eq!(Unit::Millis.format(2500.0), "2.50 s");
        assert_eq!(Unit::KiB.format(3072.0), "3.0 MB");
    }
}
