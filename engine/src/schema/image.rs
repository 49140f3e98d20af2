//! The image manifest (the `manifest` file at the root of an ACI) and its dependencies.

use serde::{Deserialize, Serialize};

use super::AC_VERSION;
use super::app::App;
use super::error::{SchemaError, validated_serde};
use super::image_id::ImageId;
use super::labels::{Annotation, Label, check_annotations, check_labels, find_label};
use super::names::ACIdentifier;
use super::validate::{check_absolute, check_ac_kind, check_ac_version, check_unique, each, nullable};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct Dependency {
    pub image_name: ACIdentifier,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "imageID")]
    pub image_id: Option<ImageId>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

validated_serde!(Dependency, Dependency::validate);

impl Dependency {
    pub fn validate(&self) -> Result<(), SchemaError> {
        check_labels(&self.labels)
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        find_label(&self.labels, name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "camelCase")]
pub struct ImageManifest {
    pub ac_kind: String,
    pub ac_version: String,
    pub name: ACIdentifier,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<App>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub path_whitelist: Vec<String>,
}

validated_serde!(ImageManifest, ImageManifest::check);

impl ImageManifest {
    pub const KIND: &'static str = "ImageManifest";

    /// An empty manifest for `name` at this crate's acVersion.
    pub fn new(name: ACIdentifier) -> Self {
        Self {
            ac_kind: Self::KIND.to_string(),
            ac_version: AC_VERSION.to_string(),
            name,
            labels: Vec::new(),
            app: None,
            annotations: Vec::new(),
            dependencies: Vec::new(),
            path_whitelist: Vec::new(),
        }
    }

    /// Parses and validates; the error names the offending field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SchemaError> {
        super::error::from_json(bytes)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Cannot fail: every field serializes to plain JSON with string keys.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        find_label(&self.labels, name)
    }

    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_str())
    }

    /// Checks everything, including nested values (for manifests built in code;
    /// [`ImageManifest::from_json`] already does this).
    pub fn validate(&self) -> Result<(), SchemaError> {
        if let Some(app) = &self.app {
            app.validate().map_err(|e| e.at("app"))?;
        }
        each("dependencies", &self.dependencies, Dependency::validate)?;
        self.check()
    }

    /// The manifest's own rules; nested values were checked as they were deserialized.
    fn check(&self) -> Result<(), SchemaError> {
        check_ac_kind(&self.ac_kind, Self::KIND)?;
        check_ac_version(&self.ac_version)?;
        check_labels(&self.labels)?;
        check_annotations(&self.annotations)?;
        for (i, path) in self.path_whitelist.iter().enumerate() {
            check_absolute(&format!("pathWhitelist[{i}]"), path)?;
        }
        check_unique("pathWhitelist", "", &self.path_whitelist, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn base() -> Value {
        json!({
            "acKind": "ImageManifest",
            "acVersion": "0.8.11",
            "name": "example.com/app",
        })
    }

    fn err_with(patch: impl FnOnce(&mut Value)) -> String {
        let mut v = base();
        patch(&mut v);
        ImageManifest::from_json(&serde_json::to_vec(&v).expect("ser"))
            .expect_err("should be invalid")
            .to_string()
    }

    #[test]
    fn schema_image_minimal_round_trip() {
        let m = ImageManifest::from_json(&serde_json::to_vec(&base()).expect("ser")).expect("valid");
        assert_eq!(
            m,
            ImageManifest::new(ACIdentifier::new("example.com/app").expect("ok"))
        );
        assert_eq!(ImageManifest::from_json(&m.to_json()).expect("again"), m);
    }

    #[test]
    fn schema_image_kind_and_version() {
        assert_eq!(
            err_with(|v| v["acKind"] = json!("PodManifest")),
            r#"acKind: must be "ImageManifest", got "PodManifest""#
        );
        assert!(
            err_with(|v| v["acVersion"] = json!("0.8"))
                .starts_with("acVersion: \"0.8\" is not a semantic version")
        );
        assert_eq!(
            err_with(|v| {
                v.as_object_mut().expect("object").remove("acKind");
            }),
            "acKind: is required"
        );
    }

    #[test]
    fn schema_image_name() {
        assert!(
            err_with(|v| v["name"] = json!("Example.com/App"))
                .starts_with("name: \"Example.com/App\" is not a valid AC Identifier")
        );
        assert_eq!(
            err_with(|v| v["name"] = json!(5)),
            "name: invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn schema_image_labels() {
        assert_eq!(
            err_with(|v| v["labels"] =
                json!([{"name": "version", "value": "1"}, {"name": "Os", "value": "linux"}])),
            r#"labels[1].name: "Os" is not a valid AC Identifier (lowercase letters, digits, -._~/ only)"#
        );
        assert!(
            err_with(|v| v["labels"] =
                json!([{"name": "os", "value": "linux"}, {"name": "arch", "value": "sparc"}]))
            .starts_with("labels[1].value: unknown arch \"sparc\" for os linux")
        );
        assert!(
            err_with(|v| v["labels"] = json!([{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]))
                .starts_with("labels[1].name: duplicate")
        );
        assert_eq!(
            err_with(|v| v["labels"] = json!([{"name": "a"}])),
            "labels[0].value: is required"
        );
    }

    #[test]
    fn schema_image_annotations() {
        assert!(err_with(|v| v["annotations"] = json!([{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]))
            .starts_with("annotations[1].name: duplicate"));
        assert!(
            err_with(|v| v["annotations"] = json!([{"name": "A", "value": "1"}]))
                .starts_with("annotations[0].name: \"A\"")
        );
    }

    #[test]
    fn schema_image_app_nested_path() {
        assert_eq!(
            err_with(|v| v["app"] = json!({"exec": ["./sh"], "user": "0", "group": "0"})),
            r#"app.exec[0]: must be an absolute path or a program name looked up in PATH, got "./sh""#
        );
        assert_eq!(
            err_with(|v| v["app"] = json!({"user": "0"})),
            "app.group: is required"
        );
        assert_eq!(
            err_with(|v| v["app"] = json!("x")),
            r#"app: invalid type: string "x", expected struct App"#
        );
    }

    #[test]
    fn schema_image_dependencies() {
        assert!(
            err_with(|v| v["dependencies"] = json!([{"imageName": "a/B"}]))
                .starts_with("dependencies[0].imageName: \"a/B\"")
        );
        assert!(
            err_with(|v| v["dependencies"] = json!([{"imageName": "a", "imageID": "sha512-abc"}]))
                .starts_with("dependencies[0].imageID: \"sha512-abc\" is not an image ID")
        );
        assert!(
            err_with(|v| v["dependencies"] =
                json!([{"imageName": "a", "labels": [{"name": "os", "value": "beos"}]}]))
            .starts_with("dependencies[0].labels[0].value: unknown os")
        );
        assert_eq!(
            err_with(|v| v["dependencies"] = json!([{}])),
            "dependencies[0].imageName: is required"
        );
    }

    #[test]
    fn schema_image_path_whitelist() {
        assert_eq!(
            err_with(|v| v["pathWhitelist"] = json!(["/etc", "bin"])),
            r#"pathWhitelist[1]: must be an absolute path, got "bin""#
        );
        assert_eq!(
            err_with(|v| v["pathWhitelist"] = json!(["/etc", "/bin", "/etc"])),
            r#"pathWhitelist[2]: duplicate "/etc" (first at pathWhitelist[0])"#
        );
    }

    #[test]
    fn schema_image_validate_deep_for_built_manifests() {
        let mut m = ImageManifest::new(ACIdentifier::new("a").expect("ok"));
        assert!(m.validate().is_ok());
        m.app = Some(App {
            exec: vec!["bin/rel".into()],
            user: "0".into(),
            group: "0".into(),
            ..App::default()
        });
        assert_eq!(m.validate().expect_err("bad").field(), Some("app.exec[0]"));
        m.app = None;
        m.ac_kind = "Image".into();
        assert_eq!(m.validate().expect_err("bad").field(), Some("acKind"));
    }

    #[test]
    fn schema_image_syntax_error_is_json() {
        assert!(matches!(
            ImageManifest::from_json(b"{"),
            Err(SchemaError::Json(_))
        ));
    }
}
