//! Resource quantities as appc borrowed them from Kubernetes: `512M`, `1Gi`, `250m`,
//! `1.5`, `1e3`.
//!
//! The text is kept as written (so a manifest round-trips unchanged); the value is held
//! exactly in thousandths, which is all the precision the format promises (finer values
//! round up, as Kubernetes does).

use std::fmt;

use super::error::SchemaError;

/// Quantities larger than this (in whole units) are refused, as in Kubernetes.
const MAX_UNITS: u128 = i64::MAX as u128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    text: String,
    millis: u128,
}

impl Quantity {
    pub fn parse(s: &str) -> Result<Self, SchemaError> {
        let millis = parse_millis(s).map_err(|why| {
            SchemaError::invalid(
                "",
                format!("{s:?} is not a valid quantity ({why}; e.g. \"512M\", \"1Gi\", \"250m\")"),
            )
        })?;
        Ok(Self {
            text: s.to_string(),
            millis,
        })
    }

    /// A plain count of units (bytes, cores), written without a suffix.
    pub fn from_units(units: u64) -> Self {
        Self {
            text: units.to_string(),
            millis: u128::from(units) * 1000,
        }
    }

    /// A count of thousandths (millicores), written with the `m` suffix.
    pub fn from_millis(millis: u64) -> Self {
        Self {
            text: format!("{millis}m"),
            millis: u128::from(millis),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whole units, rounded up (`100m` bytes is 1 byte). Saturates at `u64::MAX`, which
    /// parsing never exceeds.
    pub fn units(&self) -> u64 {
        u64::try_from(self.millis.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// Thousandths of a unit (`1.5` is 1500, `250m` is 250), saturating at `u64::MAX`.
    pub fn millis(&self) -> u64 {
        u64::try_from(self.millis).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Quantity {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// What a suffix does to the number: multiply by 10^n or by 2^n.
enum Scale {
    Decimal(i64),
    Binary(u32),
}

fn suffix_scale(suffix: &str) -> Result<Scale, &'static str> {
    Ok(match suffix {
        "" => Scale::Decimal(0),
        "m" => Scale::Decimal(-3),
        "k" => Scale::Decimal(3),
        "M" => Scale::Decimal(6),
        "G" => Scale::Decimal(9),
        "T" => Scale::Decimal(12),
        "P" => Scale::Decimal(15),
        "E" => Scale::Decimal(18),
        "Ki" => Scale::Binary(10),
        "Mi" => Scale::Binary(20),
        "Gi" => Scale::Binary(30),
        "Ti" => Scale::Binary(40),
        "Pi" => Scale::Binary(50),
        "Ei" => Scale::Binary(60),
        _ => {
            let exp = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or("unknown suffix")?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err("unknown suffix");
            }
            // Anything past a few dozen digits either overflows or rounds to zero anyway.
            let n: i64 = exp
                .parse()
                .unwrap_or(if exp.starts_with('-') { -1000 } else { 1000 });
            Scale::Decimal(n.clamp(-1000, 1000))
        }
    })
}

fn parse_millis(s: &str) -> Result<u128, &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.starts_with('-') {
        return Err("must not be negative");
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let number_len = s
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err("no digits");
    }
    if frac_part.contains('.') {
        return Err("more than one decimal point");
    }
    let scale = suffix_scale(suffix)?;

    // value = digits * 10^(-frac_len) * scale, in thousandths: shift by 3 more.
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    if digits.len() > 38 {
        return Err("too large");
    }
    let mut mantissa: u128 = digits.parse().map_err(|_| "too large")?;
    let frac_len = i64::try_from(frac_part.len()).map_err(|_| "too large")?;
    let mut exp10 = 3 - frac_len;
    match scale {
        Scale::Decimal(n) => exp10 += n,
        Scale::Binary(bits) => {
            mantissa = mantissa.checked_mul(1u128 << bits).ok_or("too large")?;
        }
    }
    let millis = if exp10 >= 0 {
        let factor = u32::try_from(exp10)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
            .ok_or("too large")?;
        mantissa.checked_mul(factor).ok_or("too large")?
    } else {
        // More precision than a thousandth rounds up, never down to zero.
        match u32::try_from(-exp10).ok().and_then(|e| 10u128.checked_pow(e)) {
            Some(divisor) => mantissa.div_ceil(divisor),
            None => 1,
        }
    };
    if millis.div_ceil(1000) > MAX_UNITS {
        return Err("too large");
    }
    Ok(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(s: &str) -> u64 {
        Quantity::parse(s).expect(s).units()
    }
    fn millis(s: &str) -> u64 {
        Quantity::parse(s).expect(s).millis()
    }

    #[test]
    fn schema_quantity_memory_units() {
        assert_eq!(units("512M"), 512_000_000);
        assert_eq!(units("1Gi"), 1 << 30);
        assert_eq!(units("1.5Gi"), 3 << 29);
        assert_eq!(units("128Mi"), 128 << 20);
        assert_eq!(units("1k"), 1000);
        assert_eq!(units("1Ki"), 1024);
        assert_eq!(units("1e3"), 1000);
        assert_eq!(units("1E6"), 1_000_000);
        assert_eq!(units("42"), 42);
        assert_eq!(units("+42"), 42);
        assert_eq!(units("0"), 0);
        assert_eq!(units("100m"), 1, "fractions round up");
        assert_eq!(u128::from(units("7Ei")), 7u128 << 60);
        assert!(Quantity::parse("8Ei").is_err(), "2^63 is past i64::MAX");
    }

    #[test]
    fn schema_quantity_cpu_millis() {
        assert_eq!(millis("250m"), 250);
        assert_eq!(millis("1"), 1000);
        assert_eq!(millis("1.5"), 1500);
        assert_eq!(millis(".5"), 500);
        assert_eq!(millis("2."), 2000);
        assert_eq!(millis("0.0001"), 1, "below a thousandth rounds up");
        assert_eq!(millis("1e-3"), 1);
        assert_eq!(millis("1e-30"), 1);
    }

    #[test]
    fn schema_quantity_rejects() {
        for bad in [
            "", "-1", "1Q", "abc", "1.2.3", ".", "1 G", "1g", "1e", "1e+", "1ee3", "16Ei", "1e100", "G",
        ] {
            let err = Quantity::parse(bad).expect_err(bad);
            assert!(
                err.to_string().contains("is not a valid quantity"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn schema_quantity_keeps_text() {
        assert_eq!(Quantity::parse("1.5Gi").expect("ok").to_string(), "1.5Gi");
        assert_eq!(Quantity::from_units(5).as_str(), "5");
        assert_eq!(Quantity::from_millis(250).as_str(), "250m");
        assert_eq!(Quantity::from_millis(250).millis(), 250);
    }
}
