//! The pod manifest: the apps of a pod, the volumes they share, pod-level isolators,
//! annotations and exposed ports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::AC_VERSION;
use super::app::App;
use super::error::{SchemaError, validated_serde};
use super::image_id::ImageId;
use super::isolator::{Isolator, check_isolators};
use super::labels::{Annotation, Label, check_annotations, check_labels, find_label};
use super::names::{ACIdentifier, ACName};
use super::validate::{
    check_absolute, check_ac_kind, check_ac_version, check_unique, each, nullable, parse_mode,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct RuntimeImage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<ACIdentifier>,
    pub id: ImageId,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Label>,
}

validated_serde!(RuntimeImage, RuntimeImage::validate);

impl RuntimeImage {
    pub fn new(id: ImageId) -> Self {
        Self {
            name: None,
            id,
            labels: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), SchemaError> {
        check_labels(&self.labels)
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        find_label(&self.labels, name)
    }
}

/// A volume the pod provides (`--volume name,kind=host,source=/x,readOnly=true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct Volume {
    pub name: ACName,
    pub kind: VolumeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

validated_serde!(Volume, Volume::validate);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Host,
    Empty,
}

impl VolumeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Host => "host",
            VolumeKind::Empty => "empty",
        }
    }
}

impl Volume {
    /// Mode of an empty volume when none is given (appc).
    pub const DEFAULT_MODE: u32 = 0o755;

    /// A bind mount of `source` from the host.
    pub fn host(name: ACName, source: &str) -> Result<Self, SchemaError> {
        let v = Self {
            name,
            kind: VolumeKind::Host,
            source: Some(source.to_string()),
            read_only: None,
            recursive: None,
            mode: None,
            uid: None,
            gid: None,
        };
        v.validate()?;
        Ok(v)
    }

    /// A fresh directory that lives as long as the pod.
    pub fn empty(name: ACName) -> Self {
        Self {
            name,
            kind: VolumeKind::Empty,
            source: None,
            read_only: None,
            recursive: None,
            mode: None,
            uid: None,
            gid: None,
        }
    }

    pub fn validate(&self) -> Result<(), SchemaError> {
        match self.kind {
            VolumeKind::Host => {
                match &self.source {
                    None => return Err(SchemaError::invalid("source", "is required for kind host")),
                    Some(s) => check_absolute("source", s)?,
                }
                // appc: ownership and mode belong to the host directory, not to us.
                for (field, set) in [
                    ("mode", self.mode.is_some()),
                    ("uid", self.uid.is_some()),
                    ("gid", self.gid.is_some()),
                ] {
                    if set {
                        return Err(SchemaError::invalid(field, "is only allowed for kind empty"));
                    }
                }
            }
            VolumeKind::Empty => {
                if self.source.is_some() {
                    return Err(SchemaError::invalid("source", "is not allowed for kind empty"));
                }
                if let Some(mode) = &self.mode {
                    parse_mode("mode", mode)?;
                }
            }
        }
        Ok(())
    }

    /// Permission bits for an empty volume (0755 unless set).
    pub fn mode_bits(&self) -> u32 {
        self.mode
            .as_deref()
            .and_then(|m| parse_mode("mode", m).ok())
            .unwrap_or(Self::DEFAULT_MODE)
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.unwrap_or(false)
    }

    /// appc: executors should mount host volumes recursively unless told otherwise.
    pub fn is_recursive(&self) -> bool {
        self.recursive.unwrap_or(true)
    }

    /// Owner of an empty volume (0 unless set).
    pub fn uid_or_default(&self) -> u32 {
        self.uid.unwrap_or(0)
    }

    /// Group of an empty volume (0 unless set).
    pub fn gid_or_default(&self) -> u32 {
        self.gid.unwrap_or(0)
    }
}

/// Binds a pod volume to a path in one app (`--mount volume=NAME,target=PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct Mount {
    pub volume: ACName,
    pub path: String,
}

validated_serde!(Mount, Mount::validate);

impl Mount {
    pub fn validate(&self) -> Result<(), SchemaError> {
        check_absolute("path", &self.path)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct RuntimeApp {
    pub name: ACName,
    pub image: RuntimeImage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<App>,
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        rename = "readOnlyRootFS"
    )]
    pub read_only_root_fs: bool,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
}

validated_serde!(RuntimeApp, RuntimeApp::check);

impl RuntimeApp {
    pub fn new(name: ACName, image: RuntimeImage) -> Self {
        Self {
            name,
            image,
            app: None,
            read_only_root_fs: false,
            mounts: Vec::new(),
            annotations: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), SchemaError> {
        self.image.validate().map_err(|e| e.at("image"))?;
        if let Some(app) = &self.app {
            app.validate().map_err(|e| e.at("app"))?;
        }
        each("mounts", &self.mounts, Mount::validate)?;
        self.check()
    }

    fn check(&self) -> Result<(), SchemaError> {
        check_annotations(&self.annotations)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct ExposedPort {
    pub name: ACName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// rkt's `hostIP`: forward only on this host address.
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// appc's `podPort`: the pod side given outright (`rkt app sandbox
    /// --port`, where no app declares it yet) instead of an app's port by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_port: Option<super::app::Port>,
}

validated_serde!(ExposedPort, ExposedPort::validate);

impl ExposedPort {
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.host_port == Some(0) {
            return Err(SchemaError::invalid("hostPort", "must be in 1..=65535, got 0"));
        }
        if let Some(ip) = &self.host_ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(SchemaError::invalid(
                "hostIP",
                format!("{ip:?} is not an IP address"),
            ));
        }
        if let Some(port) = &self.pod_port {
            port.validate()?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct PodManifest {
    pub ac_version: String,
    pub ac_kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub apps: Vec<RuntimeApp>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub isolators: Vec<Isolator>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ExposedPort>,
    /// Free-form user metadata (`rkt run --user-annotation`); never affects the runtime.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub user_annotations: BTreeMap<String, String>,
    /// Free-form user labels (`rkt run --user-label`); never affects the runtime.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub user_labels: BTreeMap<String, String>,
}

validated_serde!(PodManifest, PodManifest::check);

impl Default for PodManifest {
    /// An empty pod at this crate's acVersion.
    fn default() -> Self {
        Self {
            ac_version: AC_VERSION.to_string(),
            ac_kind: Self::KIND.to_string(),
            apps: Vec::new(),
            volumes: Vec::new(),
            isolators: Vec::new(),
            annotations: Vec::new(),
            ports: Vec::new(),
            user_annotations: BTreeMap::new(),
            user_labels: BTreeMap::new(),
        }
    }
}

impl PodManifest {
    pub const KIND: &'static str = "PodManifest";

    /// Parses and validates; the error names the offending field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SchemaError> {
        super::error::from_json(bytes)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Cannot fail: every field serializes to plain JSON with string keys.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn app(&self, name: &str) -> Option<&RuntimeApp> {
        self.apps.iter().find(|a| a.name.as_str() == name)
    }

    pub fn app_mut(&mut self, name: &str) -> Option<&mut RuntimeApp> {
        self.apps.iter_mut().find(|a| a.name.as_str() == name)
    }

    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name.as_str() == name)
    }

    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_str())
    }

    /// Checks everything, including nested values (for manifests built in code;
    /// [`PodManifest::from_json`] already does this).
    pub fn validate(&self) -> Result<(), SchemaError> {
        each("apps", &self.apps, RuntimeApp::validate)?;
        each("volumes", &self.volumes, Volume::validate)?;
        each("isolators", &self.isolators, Isolator::validate)?;
        each("ports", &self.ports, ExposedPort::validate)?;
        self.check()
    }

    /// The pod's own and cross-reference rules.
    fn check(&self) -> Result<(), SchemaError> {
        check_ac_kind(&self.ac_kind, Self::KIND)?;
        check_ac_version(&self.ac_version)?;
        check_unique("apps", "name", &self.apps, |a| a.name.as_str())?;
        check_unique("volumes", "name", &self.volumes, |v| v.name.as_str())?;
        for (i, app) in self.apps.iter().enumerate() {
            for (j, mount) in app.mounts.iter().enumerate() {
                if self.volume(mount.volume.as_str()).is_none() {
                    return Err(SchemaError::invalid(
                        format!("apps[{i}].mounts[{j}].volume"),
                        format!("no volume named {:?} in volumes", mount.volume.as_str()),
                    ));
                }
            }
        }
        check_isolators(&self.isolators)?;
        check_annotations(&self.annotations)?;
        check_unique("ports", "name", &self.ports, |p| p.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn id() -> String {
        format!("sha512-{}", "ab".repeat(64))
    }

    fn base() -> Value {
        json!({
            "acVersion": "0.8.11",
            "acKind": "PodManifest",
            "apps": [
                {"name": "web", "image": {"id": id()}, "mounts": [{"volume": "data", "path": "/data"}]}
            ],
            "volumes": [{"name": "data", "kind": "host", "source": "/srv"}],
        })
    }

    fn err_with(patch: impl FnOnce(&mut Value)) -> String {
        let mut v = base();
        patch(&mut v);
        PodManifest::from_json(&serde_json::to_vec(&v).expect("ser"))
            .expect_err("should be invalid")
            .to_string()
    }

    #[test]
    fn schema_pod_base_is_valid_and_round_trips() {
        let p = PodManifest::from_json(&serde_json::to_vec(&base()).expect("ser")).expect("valid");
        assert_eq!(p.app("web").map(|a| a.mounts.len()), Some(1));
        assert_eq!(PodManifest::from_json(&p.to_json()).expect("again"), p);
        assert!(p.validate().is_ok());
    }

    #[test]
    fn schema_pod_kind_version() {
        assert_eq!(
            err_with(|v| v["acKind"] = json!("ImageManifest")),
            r#"acKind: must be "PodManifest", got "ImageManifest""#
        );
        assert!(err_with(|v| v["acVersion"] = json!("latest")).starts_with("acVersion: "));
    }

    #[test]
    fn schema_pod_app_names() {
        assert!(
            err_with(|v| v["apps"][0]["name"] = json!("Web"))
                .starts_with("apps[0].name: \"Web\" is not a valid AC Name")
        );
        assert!(
            err_with(|v| {
                let app = v["apps"][0].clone();
                v["apps"].as_array_mut().expect("array").push(app);
            })
            .starts_with("apps[1].name: duplicate \"web\"")
        );
    }

    #[test]
    fn schema_pod_image_id() {
        assert!(
            err_with(|v| v["apps"][0]["image"]["id"] = json!("sha512-..."))
                .starts_with("apps[0].image.id: \"sha512-...\" is not an image ID")
        );
        assert_eq!(
            err_with(|v| v["apps"][0]["image"] = json!({})),
            "apps[0].image.id: is required"
        );
        assert!(
            err_with(|v| v["apps"][0]["image"]["labels"] = json!([{"name": "os", "value": "qnx"}]))
                .starts_with("apps[0].image.labels[0].value: unknown os")
        );
    }

    #[test]
    fn schema_pod_mounts_reference_volumes() {
        assert_eq!(
            err_with(|v| v["apps"][0]["mounts"] =
                json!([{"volume": "data", "path": "/a"}, {"volume": "logs", "path": "/b"}])),
            r#"apps[0].mounts[1].volume: no volume named "logs" in volumes"#
        );
        assert!(
            err_with(|v| v["apps"][0]["mounts"][0]["path"] = json!("data"))
                .starts_with("apps[0].mounts[0].path: must be an absolute")
        );
    }

    #[test]
    fn schema_pod_volumes() {
        assert!(
            err_with(|v| v["volumes"][0]["source"] = json!("srv"))
                .starts_with("volumes[0].source: must be an absolute path")
        );
        assert_eq!(
            err_with(|v| {
                v["volumes"][0].as_object_mut().expect("obj").remove("source");
            }),
            "volumes[0].source: is required for kind host"
        );
        assert_eq!(
            err_with(|v| v["volumes"][0]["kind"] = json!("empty")),
            "volumes[0].source: is not allowed for kind empty"
        );
        assert_eq!(
            err_with(|v| v["volumes"][0]["kind"] = json!("tmpfs")),
            "volumes[0].kind: unknown variant `tmpfs`, expected `host` or `empty`"
        );
        assert_eq!(
            err_with(|v| v["volumes"][0]["mode"] = json!("0755")),
            "volumes[0].mode: is only allowed for kind empty"
        );
        assert!(
            err_with(|v| v["volumes"]
                .as_array_mut()
                .expect("array")
                .push(json!({"name": "data", "kind": "empty"})))
            .starts_with("volumes[1].name: duplicate")
        );
        assert!(
            err_with(|v| v["volumes"]
                .as_array_mut()
                .expect("array")
                .push(json!({"name": "tmp", "kind": "empty", "mode": "0999"})))
            .starts_with("volumes[1].mode: \"0999\" is not an octal file mode")
        );
    }

    #[test]
    fn schema_pod_volume_defaults() {
        let mut v = Volume::empty(ACName::new("tmp").expect("ok"));
        assert_eq!(v.mode_bits(), 0o755);
        assert_eq!((v.uid_or_default(), v.gid_or_default()), (0, 0));
        v.mode = Some("1777".into());
        assert_eq!(v.mode_bits(), 0o1777);
        let h = Volume::host(ACName::new("h").expect("ok"), "/srv").expect("ok");
        assert!(h.is_recursive() && !h.is_read_only());
        assert!(Volume::host(ACName::new("h").expect("ok"), "srv").is_err());
    }

    #[test]
    fn schema_pod_ports_annotations_isolators() {
        assert!(
            err_with(
                |v| v["ports"] = json!([{"name": "http", "hostPort": 80}, {"name": "http", "hostPort": 81}])
            )
            .starts_with("ports[1].name: duplicate")
        );
        assert_eq!(
            err_with(|v| v["ports"] = json!([{"name": "http", "hostPort": 0}])),
            "ports[0].hostPort: must be in 1..=65535, got 0"
        );
        assert!(
            err_with(|v| v["annotations"] = json!([{"name": "a", "value": ""}, {"name": "a", "value": ""}]))
                .starts_with("annotations[1].name: duplicate")
        );
        assert!(
            err_with(|v| v["isolators"] = json!([{"name": "os/linux/cpu-shares", "value": 0}]))
                .starts_with("isolators[0].value: must be in 2..=262144")
        );
        assert!(
            err_with(|v| v["apps"][0]["annotations"] =
                json!([{"name": "x", "value": ""}, {"name": "x", "value": ""}]))
            .starts_with("apps[0].annotations[1].name: duplicate")
        );
    }

    #[test]
    fn schema_pod_nested_app_path() {
        assert_eq!(
            err_with(
                |v| v["apps"][0]["app"] = json!({"exec": ["/bin/sh"], "user": "0", "group": "0", "mountPoints": [{"name": "x", "path": "rel"}]})
            ),
            r#"apps[0].app.mountPoints[0].path: must be an absolute path, got "rel""#
        );
    }

    #[test]
    fn schema_pod_validate_deep_for_built_manifests() {
        let image = RuntimeImage::new(ImageId::parse(&id()).expect("ok"));
        let mut pod = PodManifest::default();
        let mut app = RuntimeApp::new(ACName::new("a").expect("ok"), image);
        app.mounts.push(Mount {
            volume: ACName::new("v").expect("ok"),
            path: "/v".into(),
        });
        pod.apps.push(app);
        assert_eq!(
            pod.validate().expect_err("dangling").field(),
            Some("apps[0].mounts[0].volume")
        );
        pod.volumes.push(Volume::empty(ACName::new("v").expect("ok")));
        assert!(pod.validate().is_ok());
        pod.volumes[0].source = Some("/x".into());
        assert_eq!(
            pod.validate().expect_err("bad volume").field(),
            Some("volumes[0].source")
        );
    }

    #[test]
    fn schema_pod_rkt_extras_round_trip() {
        let mut v = base();
        v["apps"][0]["readOnlyRootFS"] = json!(true);
        v["userAnnotations"] = json!({"Any Key": "x"});
        v["userLabels"] = json!({"team": "infra"});
        let p = PodManifest::from_json(&serde_json::to_vec(&v).expect("ser")).expect("valid");
        assert!(p.apps[0].read_only_root_fs);
        assert_eq!(p.user_labels.get("team").map(String::as_str), Some("infra"));
        let out: Value = serde_json::from_slice(&p.to_json()).expect("json");
        assert_eq!(out["apps"][0]["readOnlyRootFS"], json!(true));
        assert_eq!(out["userAnnotations"]["Any Key"], json!("x"));
    }
}
