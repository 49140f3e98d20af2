//! The pods the service knows, by token (what a pod presents) and by UUID (what
//! `rkt run` registers and unregisters under). Manifests are kept as the JSON
//! `rkt run` sent, so what an app reads back is what its pod was prepared with.

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct RegisteredPod {
    pub uuid: Uuid,
    pub token: String,
    pub manifest: Value,
    /// App name -> its image manifest.
    pub apps: HashMap<String, Value>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodsError {
    #[error("pod {0} is not registered")]
    UnknownPod(Uuid),
    #[error("the token is already in use")]
    TokenInUse,
    #[error("pod {uuid} has no app {app:?}")]
    UnknownApp { uuid: Uuid, app: String },
}

#[derive(Debug, Default)]
pub struct Pods {
    by_token: HashMap<String, Uuid>,
    by_uuid: HashMap<Uuid, RegisteredPod>,
}

impl Pods {
    /// Registers (or re-registers, with a new token) a pod. A manifest without
    /// annotations gets an empty list, so `pod/annotations` and the annotations
    /// in `pod/manifest` always agree.
    pub fn add_pod(&mut self, uuid: Uuid, token: String, mut manifest: Value) -> Result<(), PodsError> {
        if self.by_token.get(&token).is_some_and(|u| *u != uuid) {
            return Err(PodsError::TokenInUse);
        }
        if let Some(object) = manifest.as_object_mut() {
            object
                .entry("annotations")
                .and_modify(|a| {
                    if a.is_null() {
                        *a = Value::Array(Vec::new());
                    }
                })
                .or_insert_with(|| Value::Array(Vec::new()));
        }
        if let Some(old) = self.by_uuid.remove(&uuid) {
            self.by_token.remove(&old.token);
        }
        self.by_token.insert(token.clone(), uuid);
        self.by_uuid.insert(
            uuid,
            RegisteredPod {
                uuid,
                token,
                manifest,
                apps: HashMap::new(),
            },
        );
        Ok(())
    }

    pub fn add_app(&mut self, uuid: Uuid, app: &str, image_manifest: Value) -> Result<(), PodsError> {
        let pod = self.by_uuid.get_mut(&uuid).ok_or(PodsError::UnknownPod(uuid))?;
        let in_manifest = pod.manifest["apps"]
            .as_array()
            .is_some_and(|apps| apps.iter().any(|a| a["name"] == app));
        if !in_manifest {
            return Err(PodsError::UnknownApp {
                uuid,
                app: app.to_string(),
            });
        }
        pod.apps.insert(app.to_string(), image_manifest);
        Ok(())
    }

    pub fn remove(&mut self, uuid: Uuid) -> Result<(), PodsError> {
        let pod = self.by_uuid.remove(&uuid).ok_or(PodsError::UnknownPod(uuid))?;
        self.by_token.remove(&pod.token);
        Ok(())
    }

    pub fn by_token(&self, token: &str) -> Option<&RegisteredPod> {
        self.by_token.get(token).and_then(|u| self.by_uuid.get(u))
    }

    pub fn len(&self) -> usize {
        self.by_uuid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uuid.is_empty()
    }
}

impl RegisteredPod {
    /// The app's entry in the pod manifest.
    pub fn runtime_app(&self, app: &str) -> Option<&Value> {
        self.manifest["apps"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == app)
    }

    /// The image's annotations with the pod manifest's app annotations applied:
    /// one of the same name replaces the image's in place, a new one is appended.
    pub fn app_annotations(&self, app: &str) -> Option<Vec<Value>> {
        let image = self.apps.get(app)?;
        let mut merged: Vec<Value> = image["annotations"].as_array().cloned().unwrap_or_default();
        let overrides = self
            .runtime_app(app)
            .and_then(|a| a["annotations"].as_array().cloned())
            .unwrap_or_default();
        for annotation in overrides {
            match merged.iter_mut().find(|a| a["name"] == annotation["name"]) {
                Some(slot) => *slot = annotation,
                None => merged.push(annotation),
            }
        }
        Some(merged)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_manifest() -> Value {
        json!({"acKind": "PodManifest", "apps": [
            {"name": "a", "image": {"id": "sha512-aa"}, "annotations": [
                {"name": "two", "value": "pod"}, {"name": "three", "value": "pod"}]},
            {"name": "b", "image": {"id": "sha512-bb"}}
        ]})
    }

    #[test]
    fn app_annotations_override_in_place_then_append() {
        let mut pods = Pods::default();
        let uuid = Uuid::new_v4();
        pods.add_pod(uuid, "t".into(), pod_manifest()).unwrap();
        let image =
            json!({"annotations": [{"name": "one", "value": "img"}, {"name": "two", "value": "img"}]});
        pods.add_app(uuid, "a", image).unwrap();
        let merged = pods.by_token("t").unwrap().app_annotations("a").unwrap();
        assert_eq!(
            merged,
            vec![
                json!({"name": "one", "value": "img"}),
                json!({"name": "two", "value": "pod"}),
                json!({"name": "three", "value": "pod"}),
            ]
        );
    }

    #[test]
    fn tokens_are_per_pod_and_forgotten_with_it() {
        let mut pods = Pods::default();
        let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
        pods.add_pod(one, "t1".into(), pod_manifest()).unwrap();
        assert_eq!(
            pods.add_pod(two, "t1".into(), pod_manifest()),
            Err(PodsError::TokenInUse)
        );
        pods.add_pod(two, "t2".into(), pod_manifest()).unwrap();
        assert_eq!(pods.by_token("t2").unwrap().uuid, two);
        assert!(pods.by_token("t1").unwrap().manifest["annotations"].is_array());
        assert!(matches!(
            pods.add_app(one, "nope", json!({})),
            Err(PodsError::UnknownApp { .. })
        ));
        pods.remove(one).unwrap();
        assert!(pods.by_token("t1").is_none());
        assert_eq!(pods.remove(one), Err(PodsError::UnknownPod(one)));
        assert_eq!(pods.len(), 1);
    }
}
