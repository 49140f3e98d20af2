//! The `app` section: what to run, as whom, with which environment, mount points, ports,
//! event handlers and isolators. Shared by image manifests and pod manifests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{SchemaError, validated_serde};
use super::isolator::{Isolator, check_isolators};
use super::names::ACName;
use super::validate::{check_absolute, check_non_empty, check_program, check_unique, each, nullable};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

validated_serde!(EnvVar, EnvVar::validate);

impl EnvVar {
    pub fn new(name: &str, value: &str) -> Result<Self, SchemaError> {
        let v = Self {
            name: name.to_string(),
            value: value.to_string(),
        };
        v.validate()?;
        Ok(v)
    }

    /// POSIX names plus `.` and `-`, which the appc spec allows for practical reasons.
    pub fn validate(&self) -> Result<(), SchemaError> {
        let n = self.name.as_bytes();
        let valid = n.first().is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
            && n.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(())
        } else {
            Err(SchemaError::invalid(
                "name",
                format!(
                    "{:?} is not a valid environment variable name (letters, digits, _ . -, not starting with a digit)",
                    self.name
                ),
            ))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct EventHandler {
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub exec: Vec<String>,
}

validated_serde!(EventHandler, EventHandler::validate);

impl EventHandler {
    pub const PRE_START: &'static str = "pre-start";
    pub const POST_STOP: &'static str = "post-stop";

    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.name != Self::PRE_START && self.name != Self::POST_STOP {
            return Err(SchemaError::invalid(
                "name",
                format!("must be \"pre-start\" or \"post-stop\", got {:?}", self.name),
            ));
        }
        match self.exec.first() {
            None => Err(SchemaError::invalid("exec", "must not be empty")),
            Some(cmd) => check_program("exec[0]", cmd),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct MountPoint {
    pub name: ACName,
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

validated_serde!(MountPoint, MountPoint::validate);

impl MountPoint {
    pub fn validate(&self) -> Result<(), SchemaError> {
        check_absolute("path", &self.path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct Port {
    pub name: ACName,
    pub protocol: String,
    pub port: u16,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub socket_activated: bool,
}

fn one() -> u32 {
    1
}

impl Serialize for Port {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Port::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut port = Port::deserialize(deserializer)?;
        // Go writers always emit count, as 0 when it was never set; appc reads that as 1.
        if port.count == 0 {
            port.count = 1;
        }
        port.validate().map_err(super::error::to_de_error)?;
        Ok(port)
    }
}

impl Port {
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.protocol != "tcp" && self.protocol != "udp" {
            return Err(SchemaError::invalid(
                "protocol",
                format!("must be \"tcp\" or \"udp\", got {:?}", self.protocol),
            ));
        }
        if self.port == 0 {
            return Err(SchemaError::invalid("port", "must be in 1..=65535, got 0"));
        }
        if self.count == 0 {
            return Err(SchemaError::invalid("count", "must be at least 1"));
        }
        let last = u64::from(self.port) + u64::from(self.count) - 1;
        if last > 65535 {
            return Err(SchemaError::invalid(
                "count",
                format!("range {}..={last} goes past port 65535", self.port),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct App {
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    pub user: String,
    pub group: String,
    /// Written as Go's appc writes it; the spec's own example spells it `supplementaryGids`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty",
        rename = "supplementaryGIDs",
        alias = "supplementaryGids"
    )]
    pub supplementary_gids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub event_handlers: Vec<EventHandler>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<EnvVar>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<MountPoint>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub isolators: Vec<Isolator>,
    /// Free-form user metadata; never affects the runtime.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub user_annotations: BTreeMap<String, String>,
    /// Free-form user labels; never affects the runtime.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub user_labels: BTreeMap<String, String>,
}

validated_serde!(App, App::check);

impl App {
    /// Checks the whole app, including each list element (for apps built in code).
    pub fn validate(&self) -> Result<(), SchemaError> {
        each("eventHandlers", &self.event_handlers, EventHandler::validate)?;
        each("environment", &self.environment, EnvVar::validate)?;
        each("mountPoints", &self.mount_points, MountPoint::validate)?;
        each("ports", &self.ports, Port::validate)?;
        each("isolators", &self.isolators, Isolator::validate)?;
        self.check()
    }

    /// The app's own rules; its elements were checked as they were deserialized.
    fn check(&self) -> Result<(), SchemaError> {
        if let Some(cmd) = self.exec.first() {
            check_program("exec[0]", cmd)?;
        }
        check_non_empty(
            "user",
            &self.user,
            "a user name, a numeric uid or an absolute path",
        )?;
        check_non_empty(
            "group",
            &self.group,
            "a group name, a numeric gid or an absolute path",
        )?;
        if let Some(dir) = &self.working_directory {
            check_absolute("workingDirectory", dir)?;
        }
        check_unique("eventHandlers", "name", &self.event_handlers, |h| h.name.as_str())?;
        check_unique("environment", "name", &self.environment, |e| e.name.as_str())?;
        check_unique("mountPoints", "name", &self.mount_points, |m| m.name.as_str())?;
        check_unique("ports", "name", &self.ports, |p| p.name.as_str())?;
        check_isolators(&self.isolators)
    }

    /// The value of environment variable `name`, if set.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.environment
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value.as_str())
    }

    /// Sets (or replaces, keeping its position) an environment variable.
    pub fn set_env(&mut self, var: EnvVar) {
        match self.environment.iter_mut().find(|e| e.name == var.name) {
            Some(existing) => *existing = var,
            None => self.environment.push(var),
        }
    }

    /// Adds an isolator, replacing any earlier one of the same name (how a command-line
    /// override such as `--memory` wins over the image's value).
    pub fn set_isolator(&mut self, iso: Isolator) {
        self.isolators.retain(|i| i.name != iso.name);
        self.isolators.push(iso);
    }

    pub fn event_handler(&self, name: &str) -> Option<&EventHandler> {
        self.event_handlers.iter().find(|h| h.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::from_json;

    fn app_err(json: &str) -> String {
        from_json::<App>(json.as_bytes())
            .expect_err("should be invalid")
            .to_string()
    }

    const BASE: &str = r#""user": "0", "group": "0""#;

    #[test]
    fn schema_app_minimal() {
        let app: App = from_json(format!("{{{BASE}}}").as_bytes()).expect("valid");
        assert_eq!(app.user, "0");
        assert!(app.exec.is_empty());
    }

    #[test]
    fn schema_app_exec_absolute_or_bare_name() {
        let app: App = from_json(format!(r#"{{"exec": ["sh"], {BASE}}}"#).as_bytes()).expect("bare name");
        assert_eq!(app.exec, vec!["sh"]);
        assert_eq!(
            app_err(&format!(r#"{{"exec": ["bin/sh"], {BASE}}}"#)),
            r#"exec[0]: must be an absolute path or a program name looked up in PATH, got "bin/sh""#
        );
    }

    #[test]
    fn schema_app_user_group_required() {
        assert_eq!(app_err(r#"{"group": "0"}"#), "user: is required");
        assert!(app_err(r#"{"user": "", "group": "0"}"#).starts_with("user: must not be empty"));
        assert!(app_err(r#"{"user": "0", "group": ""}"#).starts_with("group: must not be empty"));
        let app: App =
            from_json(br#"{"user": "/usr/bin/ping", "group": "wheel"}"#).expect("path users are allowed");
        assert_eq!(app.user, "/usr/bin/ping");
    }

    #[test]
    fn schema_app_working_directory_absolute() {
        assert!(
            app_err(&format!(r#"{{"workingDirectory": "opt", {BASE}}}"#))
                .starts_with("workingDirectory: must be an absolute path")
        );
    }

    #[test]
    fn schema_app_environment_rules() {
        assert!(
            app_err(&format!(
                r#"{{"environment": [{{"name": "1X", "value": ""}}], {BASE}}}"#
            ))
            .starts_with("environment[0].name: \"1X\" is not a valid environment variable name")
        );
        assert_eq!(
            app_err(&format!(
                r#"{{"environment": [{{"name": "A", "value": "1"}}, {{"name": "A", "value": "2"}}], {BASE}}}"#
            )),
            r#"environment[1].name: duplicate "A" (first at environment[0])"#
        );
        assert!(EnvVar::new("my.var-1", "x").is_ok());
        assert!(EnvVar::new("", "x").is_err());
        assert!(EnvVar::new("A=B", "x").is_err());
    }

    #[test]
    fn schema_app_mount_points() {
        assert!(
            app_err(&format!(
                r#"{{"mountPoints": [{{"name": "data", "path": "data"}}], {BASE}}}"#
            ))
            .starts_with("mountPoints[0].path: must be an absolute path")
        );
        assert!(
            app_err(&format!(
                r#"{{"mountPoints": [{{"name": "Data", "path": "/d"}}], {BASE}}}"#
            ))
            .starts_with("mountPoints[0].name: \"Data\" is not a valid AC Name")
        );
        assert!(
            app_err(&format!(
                r#"{{"mountPoints": [{{"name": "d", "path": "/a"}}, {{"name": "d", "path": "/b"}}], {BASE}}}"#
            ))
            .starts_with("mountPoints[1].name: duplicate")
        );
    }

    #[test]
    fn schema_app_ports() {
        let p = |body: &str| app_err(&format!(r#"{{"ports": [{body}], {BASE}}}"#));
        assert!(
            p(r#"{"name": "http", "protocol": "sctp", "port": 80}"#)
                .starts_with("ports[0].protocol: must be")
        );
        assert_eq!(
            p(r#"{"name": "http", "protocol": "tcp", "port": 0}"#),
            "ports[0].port: must be in 1..=65535, got 0"
        );
        assert!(
            p(r#"{"name": "http", "protocol": "tcp", "port": 70000}"#)
                .starts_with("ports[0].port: invalid value")
        );
        assert!(
            p(r#"{"name": "http", "protocol": "tcp", "port": 65535, "count": 2}"#)
                .starts_with("ports[0].count: range")
        );
        assert!(
            p(r#"{"name": "a", "protocol": "tcp", "port": 1}, {"name": "a", "protocol": "udp", "port": 2}"#)
                .starts_with("ports[1].name: duplicate")
        );
        let app: App = from_json(
            format!(r#"{{"ports": [{{"name": "dns", "protocol": "udp", "port": 53, "count": 0}}], {BASE}}}"#)
                .as_bytes(),
        )
        .expect("count 0 means unset");
        assert_eq!(app.ports[0].count, 1);
        let mut port = app.ports[0].clone();
        port.count = 0;
        assert_eq!(port.validate().expect_err("built with 0").field(), Some("count"));
    }

    #[test]
    fn schema_app_event_handlers() {
        let e = |body: &str| app_err(&format!(r#"{{"eventHandlers": [{body}], {BASE}}}"#));
        assert!(e(r#"{"name": "pre-stop", "exec": ["/x"]}"#).starts_with("eventHandlers[0].name: must be"));
        assert_eq!(
            e(r#"{"name": "pre-start", "exec": []}"#),
            "eventHandlers[0].exec: must not be empty"
        );
        assert!(
            e(r#"{"name": "pre-start", "exec": ["x/y"]}"#)
                .starts_with("eventHandlers[0].exec[0]: must be an absolute")
        );
        assert!(
            e(r#"{"name": "pre-start", "exec": ["/x"]}, {"name": "pre-start", "exec": ["/y"]}"#)
                .starts_with("eventHandlers[1].name: duplicate")
        );
    }

    #[test]
    fn schema_app_isolators_checked() {
        let i = |body: &str| app_err(&format!(r#"{{"isolators": [{body}], {BASE}}}"#));
        assert!(
            i(r#"{"name": "resource/memory", "value": {"limit": "lots"}}"#)
                .starts_with("isolators[0].value.limit: \"lots\"")
        );
        assert!(i(r#"{"name": "os/linux/oom-score-adj", "value": 1}, {"name": "os/linux/oom-score-adj", "value": 2}"#)
            .starts_with("isolators[1].name: "));
    }

    #[test]
    fn schema_app_supplementary_gids_spellings() {
        let a: App =
            from_json(format!(r#"{{"supplementaryGIDs": [1, 2], {BASE}}}"#).as_bytes()).expect("go spelling");
        let b: App = from_json(format!(r#"{{"supplementaryGids": [1, 2], {BASE}}}"#).as_bytes())
            .expect("spec spelling");
        assert_eq!(a, b);
        let out = serde_json::to_string(&a).expect("ser");
        assert!(out.contains("\"supplementaryGIDs\":[1,2]"), "{out}");
        assert!(
            app_err(&format!(r#"{{"supplementaryGIDs": [-1], {BASE}}}"#))
                .starts_with("supplementaryGIDs[0]: invalid value")
        );
    }

    #[test]
    fn schema_app_validate_deep() {
        let mut app = App {
            user: "0".into(),
            group: "0".into(),
            ..App::default()
        };
        assert!(app.validate().is_ok());
        app.environment.push(EnvVar {
            name: "9".into(),
            value: String::new(),
        });
        assert_eq!(
            app.validate().expect_err("bad env").field(),
            Some("environment[0].name")
        );
    }

    #[test]
    fn schema_app_helpers() {
        let mut app = App::default();
        app.set_env(EnvVar::new("A", "1").expect("ok"));
        app.set_env(EnvVar::new("A", "2").expect("ok"));
        assert_eq!(app.env("A"), Some("2"));
        app.set_isolator(Isolator::memory_limit(1));
        app.set_isolator(Isolator::memory_limit(2));
        assert_eq!(app.isolators.len(), 1);
    }
}
