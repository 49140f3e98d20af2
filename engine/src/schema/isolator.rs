//! Isolators: `{ "name": ..., "value": ... }` pairs that constrain an app or a pod.
//!
//! The stored form is the raw JSON value so that isolators this crate does not know
//! (other appc ones, vendor extensions) pass through untouched. The ones stage1s act on
//! get a typed view through [`Isolator::kind`], and are validated whenever an isolator
//! is deserialized or built.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::error::{SchemaError, validated_serde};
use super::names::ACIdentifier;
use super::quantity::Quantity;

/// An isolator. Unknown names are kept verbatim (value untouched), never dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Isolator {
    pub name: ACIdentifier,
    pub value: Value,
}

validated_serde!(Isolator, |i| i.kind().map(|_| ()));

/// Typed view of the isolators this crate understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsolatorKind {
    /// `resource/memory`, in bytes.
    Memory(ResourceAmounts),
    /// `resource/cpu`, in millicores.
    Cpu(ResourceAmounts),
    /// `os/linux/capabilities-retain-set`: the app keeps only these.
    CapabilitiesRetain(Vec<LinuxCapability>),
    /// `os/linux/capabilities-remove-set`: the app loses these.
    CapabilitiesRemove(Vec<LinuxCapability>),
    /// `os/linux/seccomp-retain-set`: only these syscalls are allowed.
    SeccompRetain(SeccompSet),
    /// `os/linux/seccomp-remove-set`: these syscalls are refused.
    SeccompRemove(SeccompSet),
    /// `os/linux/no-new-privileges`.
    NoNewPrivileges(bool),
    /// `os/linux/oom-score-adj`, -1000..=1000.
    OomScoreAdj(i32),
    /// `os/linux/cpu-shares`, 2..=262144.
    CpuShares(u32),
    /// `os/linux/read-only-paths`: absolute paths in the app, bound read-only
    /// over themselves.
    ReadOnlyPaths(Vec<String>),
    /// `os/linux/masked-paths`: absolute paths in the app made inaccessible.
    MaskedPaths(Vec<String>),
    /// A name without a typed view here; its value is carried but not interpreted.
    Other,
}

/// Request and limit of a resource isolator, already converted to the resource's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceAmounts {
    pub request: Option<u64>,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompSet {
    /// Syscall names or `@group` names (`@rkt/default-whitelist`, `@docker/default-blacklist`).
    pub syscalls: Vec<String>,
    /// The errno refused syscalls fail with (`EPERM`); the runtime's default when absent.
    pub errno: Option<String>,
}

impl Isolator {
    pub const RESOURCE_MEMORY: &'static str = "resource/memory";
    pub const RESOURCE_CPU: &'static str = "resource/cpu";
    pub const CAPABILITIES_RETAIN: &'static str = "os/linux/capabilities-retain-set";
    pub const CAPABILITIES_REMOVE: &'static str = "os/linux/capabilities-remove-set";
    pub const SECCOMP_RETAIN: &'static str = "os/linux/seccomp-retain-set";
    pub const SECCOMP_REMOVE: &'static str = "os/linux/seccomp-remove-set";
    pub const NO_NEW_PRIVILEGES: &'static str = "os/linux/no-new-privileges";
    pub const OOM_SCORE_ADJ: &'static str = "os/linux/oom-score-adj";
    pub const CPU_SHARES: &'static str = "os/linux/cpu-shares";
    /// Not in appc; OCI's readonlyPaths and maskedPaths as per-app isolators,
    /// valued `{"paths": ["/abs", ...]}`.
    pub const READ_ONLY_PATHS: &'static str = "os/linux/read-only-paths";
    pub const MASKED_PATHS: &'static str = "os/linux/masked-paths";

    /// Builds an isolator, validating the value when the name is a known one.
    pub fn new(name: &str, value: Value) -> Result<Self, SchemaError> {
        let iso = Self {
            name: ACIdentifier::new(name).map_err(|e| e.at("name"))?,
            value,
        };
        iso.kind()?;
        Ok(iso)
    }

    /// The typed view; errors name the bad part of the value (`value.set[1]`).
    pub fn kind(&self) -> Result<IsolatorKind, SchemaError> {
        let v = &self.value;
        Ok(match self.name.as_str() {
            Self::RESOURCE_MEMORY => IsolatorKind::Memory(resource(v, Quantity::units)?),
            Self::RESOURCE_CPU => IsolatorKind::Cpu(resource(v, Quantity::millis)?),
            Self::CAPABILITIES_RETAIN => IsolatorKind::CapabilitiesRetain(capabilities(v)?),
            Self::CAPABILITIES_REMOVE => IsolatorKind::CapabilitiesRemove(capabilities(v)?),
            Self::SECCOMP_RETAIN => IsolatorKind::SeccompRetain(seccomp(v)?),
            Self::SECCOMP_REMOVE => IsolatorKind::SeccompRemove(seccomp(v)?),
            Self::NO_NEW_PRIVILEGES => {
                IsolatorKind::NoNewPrivileges(v.as_bool().ok_or_else(|| {
                    SchemaError::invalid("value", format!("must be true or false, got {v}"))
                })?)
            }
            Self::OOM_SCORE_ADJ => IsolatorKind::OomScoreAdj(int_in_range(v, -1000, 1000)?),
            Self::CPU_SHARES => IsolatorKind::CpuShares(int_in_range(v, 2, 262_144)?),
            Self::READ_ONLY_PATHS => IsolatorKind::ReadOnlyPaths(paths(v)?),
            Self::MASKED_PATHS => IsolatorKind::MaskedPaths(paths(v)?),
            _ => IsolatorKind::Other,
        })
    }

    /// `--memory` as rkt sets it: request and limit both the given size.
    pub fn memory_limit(bytes: u64) -> Self {
        let q = Quantity::from_units(bytes);
        Self::resource_unchecked(Self::RESOURCE_MEMORY, &q, &q)
    }

    /// `--cpu` as rkt sets it: request and limit both the given millicores.
    pub fn cpu_limit_millis(millicores: u64) -> Self {
        let q = Quantity::from_millis(millicores);
        Self::resource_unchecked(Self::RESOURCE_CPU, &q, &q)
    }

    /// `--memory=128M`: the quantity is validated and kept as typed.
    pub fn memory_from_flag(value: &str) -> Result<Self, SchemaError> {
        let q = Quantity::parse(value)?;
        Ok(Self::resource_unchecked(Self::RESOURCE_MEMORY, &q, &q))
    }

    /// `--cpu=750m`: the quantity is validated and kept as typed.
    pub fn cpu_from_flag(value: &str) -> Result<Self, SchemaError> {
        let q = Quantity::parse(value)?;
        Ok(Self::resource_unchecked(Self::RESOURCE_CPU, &q, &q))
    }

    /// A resource isolator with independent request and limit.
    pub fn resource(
        name: &str,
        request: Option<&Quantity>,
        limit: Option<&Quantity>,
    ) -> Result<Self, SchemaError> {
        let mut value = Map::new();
        if let Some(r) = request {
            value.insert("request".into(), Value::String(r.to_string()));
        }
        if let Some(l) = limit {
            value.insert("limit".into(), Value::String(l.to_string()));
        }
        Self::new(name, Value::Object(value))
    }

    fn resource_unchecked(name: &'static str, request: &Quantity, limit: &Quantity) -> Self {
        Self {
            name: ACIdentifier::from_static(name),
            value: json!({ "request": request.as_str(), "limit": limit.as_str() }),
        }
    }

    pub fn capabilities_retain(caps: &[&str]) -> Result<Self, SchemaError> {
        Self::new(Self::CAPABILITIES_RETAIN, json!({ "set": caps }))
    }

    pub fn capabilities_remove(caps: &[&str]) -> Result<Self, SchemaError> {
        Self::new(Self::CAPABILITIES_REMOVE, json!({ "set": caps }))
    }

    pub fn seccomp_retain(syscalls: &[&str], errno: Option<&str>) -> Result<Self, SchemaError> {
        Self::new(Self::SECCOMP_RETAIN, seccomp_value(syscalls, errno))
    }

    pub fn seccomp_remove(syscalls: &[&str], errno: Option<&str>) -> Result<Self, SchemaError> {
        Self::new(Self::SECCOMP_REMOVE, seccomp_value(syscalls, errno))
    }

    pub fn no_new_privileges(enabled: bool) -> Self {
        Self {
            name: ACIdentifier::from_static(Self::NO_NEW_PRIVILEGES),
            value: Value::Bool(enabled),
        }
    }

    pub fn oom_score_adj(score: i32) -> Result<Self, SchemaError> {
        Self::new(Self::OOM_SCORE_ADJ, json!(score))
    }

    pub fn cpu_shares(shares: u32) -> Result<Self, SchemaError> {
        Self::new(Self::CPU_SHARES, json!(shares))
    }

    /// Checks this isolator and everything [`check_isolators`] needs from it.
    pub fn validate(&self) -> Result<(), SchemaError> {
        self.kind().map(|_| ())
    }
}

fn seccomp_value(syscalls: &[&str], errno: Option<&str>) -> Value {
    match errno {
        Some(e) => json!({ "set": syscalls, "errno": e }),
        None => json!({ "set": syscalls }),
    }
}

/// `{"paths": [...]}`: absolute, normalised paths (no `.` or `..`), at least one.
fn paths(v: &Value) -> Result<Vec<String>, SchemaError> {
    let list = match object(v)?.get("paths") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(SchemaError::invalid("value.paths", "must not be empty")),
        Some(other) => {
            return Err(SchemaError::invalid(
                "value.paths",
                format!("must be a list, got {other}"),
            ));
        }
        None => return Err(SchemaError::invalid("value.paths", "is required")),
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("value.paths[{i}]");
            let path = item.as_str().ok_or_else(|| {
                SchemaError::invalid(field.clone(), format!("must be a string, got {item}"))
            })?;
            let normal = path.starts_with('/')
                && path != "/"
                && !path.contains('\0')
                && path
                    .split('/')
                    .skip(1)
                    .all(|c| !c.is_empty() && c != "." && c != "..");
            if !normal {
                return Err(SchemaError::invalid(
                    field,
                    format!("{path:?} must be an absolute path below / without '.' or '..'"),
                ));
            }
            Ok(path.to_string())
        })
        .collect()
}

fn object(v: &Value) -> Result<&Map<String, Value>, SchemaError> {
    v.as_object()
        .ok_or_else(|| SchemaError::invalid("value", format!("must be an object, got {v}")))
}

fn resource(v: &Value, convert: fn(&Quantity) -> u64) -> Result<ResourceAmounts, SchemaError> {
    let obj = object(v)?;
    if let Some(d) = obj.get("default") {
        // appc reserves default=true for resources the runtime sets itself; memory and
        // cpu are always explicit.
        if d.as_bool() != Some(false) {
            return Err(SchemaError::invalid(
                "value.default",
                format!("must be false, got {d}"),
            ));
        }
    }
    let amount = |key: &str| -> Result<Option<u64>, SchemaError> {
        let field = format!("value.{key}");
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(convert(&Quantity::parse(s).map_err(|e| e.at(&field))?))),
            // Kubernetes quantities also accept a bare JSON number.
            Some(Value::Number(n)) => Ok(Some(convert(
                &Quantity::parse(&n.to_string()).map_err(|e| e.at(&field))?,
            ))),
            Some(other) => Err(SchemaError::invalid(
                field,
                format!("must be a quantity string, got {other}"),
            )),
        }
    };
    Ok(ResourceAmounts {
        request: amount("request")?,
        limit: amount("limit")?,
    })
}

/// The `set` list of a capabilities or seccomp isolator: present, non-empty strings.
fn string_set(v: &Value) -> Result<Vec<&str>, SchemaError> {
    let obj = object(v)?;
    let set = match obj.get("set") {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(SchemaError::invalid(
                "value.set",
                format!("must be a list, got {other}"),
            ));
        }
        None => return Err(SchemaError::invalid("value.set", "is required")),
    };
    if set.is_empty() {
        return Err(SchemaError::invalid("value.set", "must not be empty"));
    }
    set.iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str().ok_or_else(|| {
                SchemaError::invalid(format!("value.set[{i}]"), format!("must be a string, got {item}"))
            })
        })
        .collect()
}

fn capabilities(v: &Value) -> Result<Vec<LinuxCapability>, SchemaError> {
    string_set(v)?
        .into_iter()
        .enumerate()
        .map(|(i, name)| LinuxCapability::parse(name).map_err(|e| e.at(&format!("value.set[{i}]"))))
        .collect()
}

fn seccomp(v: &Value) -> Result<SeccompSet, SchemaError> {
    let names = string_set(v)?;
    for (i, name) in names.iter().enumerate() {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'@' | b'/' | b'.' | b'-'));
        if !ok {
            return Err(SchemaError::invalid(
                format!("value.set[{i}]"),
                format!("{name:?} is not a syscall or @group name"),
            ));
        }
    }
    // Go writers emit "errno": "" when none was chosen.
    let errno = match object(v)?.get("errno") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            let valid = s.len() >= 2
                && s.starts_with('E')
                && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            if !valid {
                return Err(SchemaError::invalid(
                    "value.errno",
                    format!("{s:?} is not an errno name like \"EPERM\""),
                ));
            }
            Some(s.clone())
        }
        Some(other) => {
            return Err(SchemaError::invalid(
                "value.errno",
                format!("must be a string, got {other}"),
            ));
        }
    };
    Ok(SeccompSet {
        syscalls: names.into_iter().map(str::to_string).collect(),
        errno,
    })
}

fn int_in_range<T: TryFrom<i64>>(v: &Value, min: i64, max: i64) -> Result<T, SchemaError> {
    let n = v
        .as_i64()
        .ok_or_else(|| SchemaError::invalid("value", format!("must be an integer, got {v}")))?;
    if !(min..=max).contains(&n) {
        return Err(SchemaError::invalid(
            "value",
            format!("must be in {min}..={max}, got {n}"),
        ));
    }
    T::try_from(n).map_err(|_| SchemaError::invalid("value", format!("must be in {min}..={max}, got {n}")))
}

/// Isolators that may appear at most once in a list.
const SINGLE_INSTANCE: &[&str] = &[
    Isolator::OOM_SCORE_ADJ,
    Isolator::CPU_SHARES,
    Isolator::SECCOMP_RETAIN,
    Isolator::SECCOMP_REMOVE,
];

/// Pairs that cannot be in the same list.
const CONFLICTS: &[(&str, &str)] = &[(Isolator::SECCOMP_RETAIN, Isolator::SECCOMP_REMOVE)];

/// List-level rules (appc): single-instance isolators and mutually exclusive ones.
pub(crate) fn check_isolators(isolators: &[Isolator]) -> Result<(), SchemaError> {
    for (i, iso) in isolators.iter().enumerate() {
        let name = iso.name.as_str();
        let earlier = &isolators[..i];
        if SINGLE_INSTANCE.contains(&name)
            && let Some(first) = earlier.iter().position(|o| o.name == name)
        {
            return Err(SchemaError::invalid(
                format!("isolators[{i}].name"),
                format!("{name:?} may appear only once (first at isolators[{first}])"),
            ));
        }
        for (a, b) in CONFLICTS {
            let other = if name == *a {
                *b
            } else if name == *b {
                *a
            } else {
                continue;
            };
            if let Some(j) = earlier.iter().position(|o| o.name == other) {
                return Err(SchemaError::invalid(
                    format!("isolators[{i}].name"),
                    format!("{name:?} cannot be combined with {other:?} (isolators[{j}])"),
                ));
            }
        }
    }
    Ok(())
}

/// The capabilities an app gets when no capability isolator says otherwise:
/// appc's default set, which rkt grants.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_SYS_CHROOT",
];

/// The app's capability set from its isolators, as rkt computes it: a retain
/// set replaces the default set, a remove set takes from it; appc forbids both.
pub fn app_capabilities(isolators: &[Isolator]) -> Result<Vec<LinuxCapability>, SchemaError> {
    let mut retain: Vec<LinuxCapability> = Vec::new();
    let mut remove: Vec<LinuxCapability> = Vec::new();
    for iso in isolators {
        match iso.kind()? {
            IsolatorKind::CapabilitiesRetain(c) => retain.extend(c),
            IsolatorKind::CapabilitiesRemove(c) => remove.extend(c),
            _ => {}
        }
    }
    if !retain.is_empty() && !remove.is_empty() {
        return Err(SchemaError::invalid(
            "isolators",
            format!(
                "{} and {} cannot be used together",
                Isolator::CAPABILITIES_RETAIN,
                Isolator::CAPABILITIES_REMOVE
            ),
        ));
    }
    let mut caps = if retain.is_empty() {
        DEFAULT_CAPABILITIES
            .iter()
            .filter_map(|c| LinuxCapability::parse(c).ok())
            .filter(|c| !remove.contains(c))
            .collect()
    } else {
        retain
    };
    caps.sort();
    caps.dedup();
    Ok(caps)
}

/// A Linux capability, by its `CAP_*` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinuxCapability(u8);

/// Indexed by capability number (linux/capability.h).
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

impl LinuxCapability {
    /// Exact `CAP_*` names only, as appc requires; near misses get a suggestion.
    pub fn parse(s: &str) -> Result<Self, SchemaError> {
        if let Some(n) = CAPABILITIES.iter().position(|c| *c == s) {
            return Ok(Self(n as u8));
        }
        let upper = s.to_ascii_uppercase();
        let guess = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let hint = if CAPABILITIES.contains(&guess.as_str()) {
            format!("did you mean {guess:?}?")
        } else {
            "e.g. \"CAP_NET_ADMIN\"".to_string()
        };
        Err(SchemaError::invalid(
            "",
            format!("{s:?} is not a Linux capability ({hint})"),
        ))
    }

    pub fn name(self) -> &'static str {
        CAPABILITIES
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("CAP_UNKNOWN")
    }

    /// The kernel's number for this capability (its bit in the capability sets).
    pub fn number(self) -> u8 {
        self.0
    }

    /// Every capability this crate knows, in kernel order.
    pub fn all() -> impl Iterator<Item = LinuxCapability> {
        (0..CAPABILITIES.len()).map(|n| Self(n as u8))
    }
}

impl std::fmt::Display for LinuxCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LinuxCapability {
    type Err = SchemaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(name: &str, value: Value) -> Isolator {
        Isolator {
            name: ACIdentifier::new(name).expect("valid name"),
            value,
        }
    }

    fn err_field(i: &Isolator) -> String {
        i.kind()
            .expect_err("should be invalid")
            .field()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn capabilities_start_from_the_default_set() {
        let names = |caps: Vec<LinuxCapability>| caps.iter().map(|c| c.name()).collect::<Vec<_>>();
        let default = app_capabilities(&[]).expect("default");
        assert_eq!(default.len(), 14);
        let removed = app_capabilities(&[Isolator::capabilities_remove(&["CAP_NET_RAW"]).expect("iso")])
            .expect("remove");
        assert_eq!(removed.len(), 13);
        assert!(!names(removed).contains(&"CAP_NET_RAW"));
        let retained =
            app_capabilities(&[Isolator::capabilities_retain(&["CAP_SYS_ADMIN", "CAP_KILL"]).expect("iso")])
                .expect("retain");
        assert_eq!(names(retained), ["CAP_KILL", "CAP_SYS_ADMIN"]);
        assert!(
            app_capabilities(&[
                Isolator::capabilities_retain(&["CAP_KILL"]).expect("iso"),
                Isolator::capabilities_remove(&["CAP_CHOWN"]).expect("iso"),
            ])
            .is_err()
        );
    }

    #[test]
    fn schema_isolator_memory_and_cpu() {
        let m = iso(
            Isolator::RESOURCE_MEMORY,
            json!({"request": "512M", "limit": "1Gi"}),
        );
        assert_eq!(
            m.kind().expect("valid"),
            IsolatorKind::Memory(ResourceAmounts {
                request: Some(512_000_000),
                limit: Some(1 << 30)
            })
        );
        let c = iso(Isolator::RESOURCE_CPU, json!({"limit": "250m", "request": 1}));
        assert_eq!(
            c.kind().expect("valid"),
            IsolatorKind::Cpu(ResourceAmounts {
                request: Some(1000),
                limit: Some(250)
            })
        );
        assert_eq!(
            err_field(&iso(Isolator::RESOURCE_MEMORY, json!({"limit": "12Q"}))),
            "value.limit"
        );
        assert_eq!(
            err_field(&iso(Isolator::RESOURCE_CPU, json!({"request": true}))),
            "value.request"
        );
        assert_eq!(err_field(&iso(Isolator::RESOURCE_CPU, json!("1"))), "value");
        assert_eq!(
            err_field(&iso(Isolator::RESOURCE_CPU, json!({"default": true}))),
            "value.default"
        );
    }

    #[test]
    fn schema_isolator_resource_constructors() {
        let m = Isolator::memory_limit(1 << 20);
        assert_eq!(m.value, json!({"request": "1048576", "limit": "1048576"}));
        assert!(matches!(
            m.kind(),
            Ok(IsolatorKind::Memory(ResourceAmounts {
                limit: Some(1048576),
                ..
            }))
        ));
        let c = Isolator::cpu_limit_millis(750);
        assert_eq!(c.value, json!({"request": "750m", "limit": "750m"}));
        let f = Isolator::memory_from_flag("128M").expect("valid");
        assert_eq!(f.value["limit"], "128M");
        assert!(Isolator::cpu_from_flag("lots").is_err());
        let q = Quantity::parse("1Gi").expect("valid");
        let r = Isolator::resource(Isolator::RESOURCE_MEMORY, None, Some(&q)).expect("valid");
        assert_eq!(r.value, json!({"limit": "1Gi"}));
    }

    #[test]
    fn schema_isolator_capabilities() {
        let i = Isolator::capabilities_retain(&["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]).expect("valid");
        match i.kind().expect("valid") {
            IsolatorKind::CapabilitiesRetain(caps) => {
                assert_eq!(caps.iter().map(|c| c.number()).collect::<Vec<_>>(), vec![12, 21]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = Isolator::capabilities_remove(&["CAP_MKNOD", "net_admin"]).expect_err("bad cap");
        assert_eq!(err.field(), Some("value.set[1]"));
        assert!(
            err.to_string().contains("did you mean \"CAP_NET_ADMIN\""),
            "{err}"
        );
        assert_eq!(
            err_field(&iso(Isolator::CAPABILITIES_RETAIN, json!({"set": []}))),
            "value.set"
        );
        assert_eq!(
            err_field(&iso(Isolator::CAPABILITIES_RETAIN, json!({}))),
            "value.set"
        );
        assert_eq!(
            err_field(&iso(Isolator::CAPABILITIES_RETAIN, json!({"set": [1]}))),
            "value.set[0]"
        );
    }

    #[test]
    fn schema_linux_capability_table() {
        assert_eq!(LinuxCapability::all().count(), 41);
        assert_eq!(
            LinuxCapability::parse("CAP_CHECKPOINT_RESTORE")
                .map(|c| c.number())
                .ok(),
            Some(40)
        );
        assert!(LinuxCapability::parse("CAP_FOO").is_err());
        for c in LinuxCapability::all() {
            assert_eq!(LinuxCapability::parse(c.name()).ok(), Some(c));
        }
    }

    #[test]
    fn schema_isolator_seccomp() {
        let i =
            Isolator::seccomp_retain(&["@rkt/default-whitelist", "mkdir"], Some("ENOSYS")).expect("valid");
        assert_eq!(
            i.kind().expect("valid"),
            IsolatorKind::SeccompRetain(SeccompSet {
                syscalls: vec!["@rkt/default-whitelist".into(), "mkdir".into()],
                errno: Some("ENOSYS".into()),
            })
        );
        let i = iso(Isolator::SECCOMP_REMOVE, json!({"set": ["reboot"], "errno": ""}));
        assert!(matches!(
            i.kind(),
            Ok(IsolatorKind::SeccompRemove(SeccompSet { errno: None, .. }))
        ));
        assert_eq!(
            Isolator::seccomp_remove(&["reboot"], Some("eperm"))
                .expect_err("bad")
                .field(),
            Some("value.errno")
        );
        assert_eq!(
            Isolator::seccomp_remove(&["re boot"], None)
                .expect_err("bad")
                .field(),
            Some("value.set[0]")
        );
        assert_eq!(
            Isolator::seccomp_remove(&[], None).expect_err("bad").field(),
            Some("value.set")
        );
    }

    #[test]
    fn schema_isolator_paths() {
        let i = iso(
            Isolator::MASKED_PATHS,
            json!({"paths": ["/etc/secret", "/var/x"]}),
        );
        assert_eq!(
            i.kind().ok(),
            Some(IsolatorKind::MaskedPaths(vec![
                "/etc/secret".into(),
                "/var/x".into()
            ]))
        );
        assert_eq!(
            iso(Isolator::READ_ONLY_PATHS, json!({"paths": ["/etc"]}))
                .kind()
                .ok(),
            Some(IsolatorKind::ReadOnlyPaths(vec!["/etc".into()]))
        );
        for bad in ["etc", "/", "/a/../b", "/a//b", "/a/"] {
            assert_eq!(
                err_field(&iso(Isolator::READ_ONLY_PATHS, json!({"paths": [bad]}))),
                "value.paths[0]",
                "{bad}"
            );
        }
        assert_eq!(
            err_field(&iso(Isolator::MASKED_PATHS, json!({"paths": []}))),
            "value.paths"
        );
        assert_eq!(
            err_field(&iso(Isolator::MASKED_PATHS, json!({"set": ["/x"]}))),
            "value.paths"
        );
    }

    #[test]
    fn schema_isolator_scalars() {
        assert_eq!(
            Isolator::no_new_privileges(true).kind().ok(),
            Some(IsolatorKind::NoNewPrivileges(true))
        );
        assert_eq!(
            err_field(&iso(Isolator::NO_NEW_PRIVILEGES, json!("yes"))),
            "value"
        );
        assert_eq!(
            Isolator::oom_score_adj(-1000).expect("ok").kind().ok(),
            Some(IsolatorKind::OomScoreAdj(-1000))
        );
        assert_eq!(
            Isolator::oom_score_adj(1001).expect_err("range").field(),
            Some("value")
        );
        assert_eq!(
            Isolator::cpu_shares(2).expect("ok").kind().ok(),
            Some(IsolatorKind::CpuShares(2))
        );
        assert!(Isolator::cpu_shares(1).is_err());
        assert!(Isolator::cpu_shares(262_145).is_err());
        assert_eq!(err_field(&iso(Isolator::OOM_SCORE_ADJ, json!(1.5))), "value");
    }

    #[test]
    fn schema_isolator_unknown_is_other_and_kept() {
        let v = json!({"anything": [1, "two", {"three": null}]});
        let i = iso("example.com/custom", v.clone());
        assert_eq!(i.kind().ok(), Some(IsolatorKind::Other));
        let back: Isolator = serde_json::from_str(&serde_json::to_string(&i).expect("ser")).expect("de");
        assert_eq!(back.value, v);
    }

    #[test]
    fn schema_isolator_deserialize_validates_known() {
        let err = serde_json::from_str::<Isolator>(r#"{"name":"os/linux/cpu-shares","value":1}"#)
            .expect_err("out of range");
        assert!(err.to_string().contains("value: must be in 2..=262144"), "{err}");
    }

    #[test]
    fn schema_isolator_list_rules() {
        let shares = Isolator::cpu_shares(512).expect("ok");
        let mem = Isolator::memory_limit(1);
        assert!(check_isolators(&[mem.clone(), mem.clone(), shares.clone()]).is_ok());
        let err = check_isolators(&[shares.clone(), mem, shares]).expect_err("twice");
        assert_eq!(err.field(), Some("isolators[2].name"));
        let retain = Isolator::seccomp_retain(&["read"], None).expect("ok");
        let remove = Isolator::seccomp_remove(&["reboot"], None).expect("ok");
        let err = check_isolators(&[retain, remove]).expect_err("conflict");
        assert_eq!(err.field(), Some("isolators[1].name"));
        assert!(err.to_string().contains("cannot be combined"), "{err}");
    }
}
