//! Labels (image selectors such as version, os, arch) and annotations (free metadata).
//!
//! Both are lists of name/value pairs whose names must be unique; the list-level rules
//! live here and are run by every struct that holds such a list.

use serde::{Deserialize, Serialize};

use super::error::SchemaError;
use super::names::ACIdentifier;
use super::validate::check_unique;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub name: ACIdentifier,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    pub name: ACIdentifier,
    pub value: String,
}

impl Label {
    pub fn new(name: &str, value: &str) -> Result<Self, SchemaError> {
        Ok(Self {
            name: ACIdentifier::new(name).map_err(|e| e.at("name"))?,
            value: value.to_string(),
        })
    }
}

impl Annotation {
    pub fn new(name: &str, value: &str) -> Result<Self, SchemaError> {
        Ok(Self {
            name: ACIdentifier::new(name).map_err(|e| e.at("name"))?,
            value: value.to_string(),
        })
    }
}

/// The os/arch pairs appc accepts in `os` and `arch` labels.
pub const VALID_OS_ARCH: &[(&str, &[&str])] = &[
    ("darwin", &["x86_64", "i386"]),
    ("freebsd", &["amd64", "i386", "arm"]),
    (
        "linux",
        &[
            "amd64",
            "i386",
            "aarch64",
            "aarch64_be",
            "armv6l",
            "armv7l",
            "armv7b",
            "ppc64",
            "ppc64le",
            "s390x",
        ],
    ),
];

/// The appc arch label for the machine this was built for, if appc names it.
pub fn host_arch_label() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "x86" => Some("i386"),
        "aarch64" => Some("aarch64"),
        "powerpc64" if cfg!(target_endian = "little") => Some("ppc64le"),
        "powerpc64" => Some("ppc64"),
        "s390x" => Some("s390x"),
        _ => None,
    }
}

/// Unique names, `name` reserved (it is the manifest's own field), and a known os/arch.
pub(crate) fn check_labels(labels: &[Label]) -> Result<(), SchemaError> {
    if let Some(i) = labels.iter().position(|l| l.name == "name") {
        return Err(SchemaError::invalid(
            format!("labels[{i}].name"),
            "\"name\" is reserved (the image name is its own field)",
        ));
    }
    check_unique("labels", "name", labels, |l| l.name.as_str())?;

    let find = |n: &str| labels.iter().position(|l| l.name == n);
    let os = find("os");
    if let Some(i) = os {
        let value = labels[i].value.as_str();
        if !VALID_OS_ARCH.iter().any(|(o, _)| *o == value) {
            let oses: Vec<&str> = VALID_OS_ARCH.iter().map(|(o, _)| *o).collect();
            return Err(SchemaError::invalid(
                format!("labels[{i}].value"),
                format!("unknown os {value:?} (must be one of: {})", oses.join(", ")),
            ));
        }
    }
    if let Some(i) = find("arch") {
        let arch = labels[i].value.as_str();
        match os.map(|o| labels[o].value.as_str()) {
            Some(os_value) => {
                let archs = VALID_OS_ARCH
                    .iter()
                    .find(|(o, _)| *o == os_value)
                    .map(|(_, a)| *a)
                    .unwrap_or_default();
                if !archs.contains(&arch) {
                    return Err(SchemaError::invalid(
                        format!("labels[{i}].value"),
                        format!(
                            "unknown arch {arch:?} for os {os_value} (must be one of: {})",
                            archs.join(", ")
                        ),
                    ));
                }
            }
            // appc only checks arch against an os; without one, any arch some os knows
            // is at least a real arch name.
            None => {
                if !VALID_OS_ARCH.iter().any(|(_, a)| a.contains(&arch)) {
                    return Err(SchemaError::invalid(
                        format!("labels[{i}].value"),
                        format!("unknown arch {arch:?}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn check_annotations(annotations: &[Annotation]) -> Result<(), SchemaError> {
    check_unique("annotations", "name", annotations, |a| a.name.as_str())
}

/// The value of the label called `name`.
pub(crate) fn find_label<'a>(labels: &'a [Label], name: &str) -> Option<&'a str> {
    labels.iter().find(|l| l.name == name).map(|l| l.value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
        pairs
            .iter()
            .map(|(n, v)| Label::new(n, v).expect("valid label"))
            .collect()
    }

    #[test]
    fn schema_labels_unique() {
        let err =
            check_labels(&labels(&[("version", "1"), ("os", "linux"), ("version", "2")])).expect_err("dup");
        assert_eq!(err.field(), Some("labels[2].name"));
    }

    #[test]
    fn schema_labels_name_reserved() {
        let err = check_labels(&labels(&[("name", "x")])).expect_err("reserved");
        assert_eq!(err.field(), Some("labels[0].name"));
    }

    #[test]
    fn schema_labels_os_arch() {
        assert!(check_labels(&labels(&[("os", "linux"), ("arch", "amd64")])).is_ok());
        assert!(check_labels(&labels(&[("arch", "aarch64"), ("os", "linux")])).is_ok());
        assert!(check_labels(&labels(&[("os", "darwin"), ("arch", "x86_64")])).is_ok());
        assert!(check_labels(&labels(&[("os", "freebsd"), ("arch", "arm")])).is_ok());
        assert!(check_labels(&labels(&[("arch", "s390x")])).is_ok());

        let err = check_labels(&labels(&[("os", "plan9")])).expect_err("bad os");
        assert_eq!(err.field(), Some("labels[0].value"));
        assert!(err.to_string().contains("darwin, freebsd, linux"), "{err}");

        let err = check_labels(&labels(&[("os", "linux"), ("arch", "x86_64")])).expect_err("bad arch");
        assert_eq!(err.field(), Some("labels[1].value"));
        assert!(err.to_string().contains("for os linux"), "{err}");

        let err = check_labels(&labels(&[("arch", "sparc")])).expect_err("bad arch");
        assert_eq!(err.field(), Some("labels[0].value"));
    }

    #[test]
    fn schema_annotations_unique() {
        let a = vec![
            Annotation::new("a", "1").expect("valid"),
            Annotation::new("a", "2").expect("valid"),
        ];
        assert_eq!(
            check_annotations(&a).expect_err("dup").field(),
            Some("annotations[1].name")
        );
    }

    #[test]
    fn schema_label_new_names_field() {
        assert_eq!(Label::new("Os", "x").expect_err("bad").field(), Some("name"));
    }
}
