//! Small checks shared by several schema types. Each returns a field path relative to
//! the struct being checked, so callers can prefix it with where that struct sits.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};

use super::error::SchemaError;

/// Go's appc writes nil lists as `null` (many fields lack omitempty); read it as empty.
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

pub(crate) fn check_absolute(field: &str, path: &str) -> Result<(), SchemaError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(SchemaError::invalid(
            field,
            format!("must be an absolute path, got {path:?}"),
        ))
    }
}

/// appc: the program an app or event handler runs is an absolute path, or a bare
/// name the executor looks up in the app's PATH. A relative path (`bin/sh`) would
/// depend on the working directory and is refused.
pub(crate) fn check_program(field: &str, program: &str) -> Result<(), SchemaError> {
    if program.starts_with('/') || (!program.is_empty() && !program.contains('/')) {
        Ok(())
    } else {
        Err(SchemaError::invalid(
            field,
            format!("must be an absolute path or a program name looked up in PATH, got {program:?}"),
        ))
    }
}

pub(crate) fn check_non_empty(field: &str, value: &str, hint: &str) -> Result<(), SchemaError> {
    if value.is_empty() {
        Err(SchemaError::invalid(field, format!("must not be empty ({hint})")))
    } else {
        Ok(())
    }
}

/// Refuses a second item with the same key; the error names the later item
/// (`ports[2].name: duplicate "http" (first at ports[0])`).
pub(crate) fn check_unique<'a, T>(
    list: &str,
    key_field: &str,
    items: &'a [T],
    key: impl Fn(&'a T) -> &'a str,
) -> Result<(), SchemaError> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let k = key(item);
        if let Some(first) = seen.insert(k, i) {
            let field = if key_field.is_empty() {
                format!("{list}[{i}]")
            } else {
                format!("{list}[{i}].{key_field}")
            };
            return Err(SchemaError::invalid(
                field,
                format!("duplicate {k:?} (first at {list}[{first}])"),
            ));
        }
    }
    Ok(())
}

/// Runs an element's own checks with its position as the path prefix.
pub(crate) fn each<T>(
    list: &str,
    items: &[T],
    check: impl Fn(&T) -> Result<(), SchemaError>,
) -> Result<(), SchemaError> {
    for (i, item) in items.iter().enumerate() {
        check(item).map_err(|e| e.at(&format!("{list}[{i}]")))?;
    }
    Ok(())
}

pub(crate) fn check_ac_kind(actual: &str, expected: &str) -> Result<(), SchemaError> {
    if actual == expected {
        Ok(())
    } else {
        Err(SchemaError::invalid(
            "acKind",
            format!("must be {expected:?}, got {actual:?}"),
        ))
    }
}

/// acVersion: SemVer 2.0.0 (`major.minor.patch[-pre][+build]`), and not 0.0.0 (appc).
pub(crate) fn check_ac_version(v: &str) -> Result<(), SchemaError> {
    let bad = || {
        SchemaError::invalid(
            "acVersion",
            format!("{v:?} is not a semantic version (major.minor.patch[-pre][+build])"),
        )
    };
    let (rest, build) = match v.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    if numbers.len() != 3 || !numbers.iter().all(|n| is_numeric_identifier(n)) {
        return Err(bad());
    }
    if let Some(pre) = pre
        && !pre.split('.').all(|id| {
            is_identifier(id) && (!id.bytes().all(|b| b.is_ascii_digit()) || is_numeric_identifier(id))
        })
    {
        return Err(bad());
    }
    if let Some(build) = build
        && !build.split('.').all(is_identifier)
    {
        return Err(bad());
    }
    if numbers.iter().all(|n| *n == "0") {
        return Err(SchemaError::invalid("acVersion", "must not be 0.0.0"));
    }
    Ok(())
}

/// A number without leading zeros.
fn is_numeric_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Octal permission bits as appc writes them ("0755"); at most 0o7777.
pub(crate) fn parse_mode(field: &str, mode: &str) -> Result<u32, SchemaError> {
    let bad = || SchemaError::invalid(field, format!("{mode:?} is not an octal file mode like \"0755\""));
    if mode.is_empty() || mode.len() > 5 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let bits = u32::from_str_radix(mode, 8).map_err(|_| bad())?;
    if bits > 0o7777 {
        return Err(bad());
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_ac_version_semver() {
        for ok in [
            "0.8.11",
            "1.0.0",
            "1.2.3-alpha.1",
            "1.2.3+build.5",
            "1.2.3-rc-1+x",
            "0.0.1",
        ] {
            assert!(check_ac_version(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "1", "1.2", "1.2.3.4", "01.2.3", "1.2.x", "1.2.3-", "1.2.3-01", "1.2.3+", "v1.2.3", "0.0.0",
        ] {
            let err = check_ac_version(bad).expect_err(bad);
            assert_eq!(err.field(), Some("acVersion"), "{bad}");
        }
    }

    #[test]
    fn schema_mode_octal() {
        assert_eq!(parse_mode("mode", "0755").ok(), Some(0o755));
        assert_eq!(parse_mode("mode", "1777").ok(), Some(0o1777));
        assert_eq!(parse_mode("mode", "700").ok(), Some(0o700));
        for bad in ["", "0758", "rwx", "77777", "-1", "0x1ff"] {
            assert!(parse_mode("mode", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schema_unique_names_later_item() {
        let items = ["a", "b", "a"];
        let err = check_unique("ports", "name", &items, |s| s).expect_err("dup");
        assert_eq!(
            err.to_string(),
            r#"ports[2].name: duplicate "a" (first at ports[0])"#
        );
    }
}
