//! What the service answers: registrations from `rkt run` on the unix socket,
//! and the appc endpoints apps call over TCP. Plain functions from a request to
//! a response, so every route is tested without a socket.

use std::sync::Mutex;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rkt_engine::mds::{API_PREFIX, FLAVOR, FLAVOR_HEADER, PORT_HEADER};
use serde_json::Value;
use sha2::Sha512;
use uuid::Uuid;

use crate::http::{Request, Response, percent_decode};
use crate::pods::{Pods, PodsError};

type HmacSha512 = Hmac<Sha512>;

/// One service instance: its pods and its HMAC key (random, never leaves the
/// process, so signatures verify only with the instance that made them).
pub struct Service {
    pods: Mutex<Pods>,
    key: [u8; 64],
    public_port: u16,
}

impl Service {
    pub fn new(key: [u8; 64], public_port: u16) -> Self {
        Service {
            pods: Mutex::new(Pods::default()),
            key,
            public_port,
        }
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, Pods> {
        // A panic while holding the lock cannot leave Pods half-updated in a way
        // that matters more than refusing every later request would.
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `PUT /pods/<uuid>?token=T` (pod manifest), `PUT /pods/<uuid>/<app>`
    /// (image manifest), `DELETE /pods/<uuid>`.
    pub fn registration(&self, req: &Request) -> Response {
        let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        let (uuid, app) = match segments.as_slice() {
            ["pods", uuid] => (*uuid, None),
            ["pods", uuid, app] => (*uuid, Some(*app)),
            _ => return Response::text(404, "no such registration endpoint"),
        };
        let Ok(uuid) = Uuid::parse_str(uuid) else {
            return Response::text(400, format!("UUID {uuid:?} is malformed"));
        };
        let body = || -> Result<Value, Response> {
            serde_json::from_slice::<Value>(&req.body)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| Response::text(400, "the body is not a JSON manifest"))
        };
        let answer = match (req.method.as_str(), app) {
            ("PUT", None) => {
                let token = req.form_value("token").unwrap_or_default();
                if token.len() < 32 {
                    return Response::text(400, "token missing or shorter than 128 bits");
                }
                let manifest = match body() {
                    Ok(m) => m,
                    Err(r) => return r,
                };
                self.pods().add_pod(uuid, token, manifest)
            }
            ("PUT", Some(app)) => {
                let manifest = match body() {
                    Ok(m) => m,
                    Err(r) => return r,
                };
                self.pods().add_app(uuid, app, manifest)
            }
            ("DELETE", None) => self.pods().remove(uuid),
            _ => return Response::text(405, "method not allowed"),
        };
        match answer {
            Ok(()) => {
                let mut ok = Response::text(200, "");
                ok.headers.push((PORT_HEADER, self.public_port.to_string()));
                ok
            }
            Err(e @ PodsError::TokenInUse) => Response::text(409, e.to_string()),
            Err(e) => Response::text(404, e.to_string()),
        }
    }

    /// `/<token>/acMetadata/v1/...` for apps.
    pub fn public(&self, req: &Request) -> Response {
        if req.header(FLAVOR_HEADER) != Some(FLAVOR) {
            return Response::text(400, format!("the {FLAVOR_HEADER}: {FLAVOR} header is required"));
        }
        let rest = req.path.strip_prefix('/').unwrap_or(&req.path);
        let Some((token, endpoint)) = rest.split_once('/') else {
            return Response::text(404, "not found");
        };
        let Some(endpoint) = endpoint
            .strip_prefix(API_PREFIX.trim_start_matches('/'))
            .and_then(|e| e.strip_prefix('/'))
        else {
            return Response::text(404, "not found");
        };
        let Some(endpoint) = percent_decode(endpoint, false) else {
            return Response::text(400, "malformed path");
        };
        let pods = self.pods();
        // A token nobody registered, or one whose pod has gone: the caller is no pod we serve.
        let Some(pod) = pods.by_token(token) else {
            return Response::text(401, "unknown token");
        };
        let segments: Vec<&str> = endpoint.split('/').collect();
        let method = req.method.as_str();
        let (needs, answer) = match segments.as_slice() {
            ["pod", "annotations"] => ("GET", json_of(&pod.manifest["annotations"])),
            ["pod", "annotations", name] => ("GET", annotation(&pod.manifest["annotations"], name)),
            ["pod", "manifest"] => ("GET", json_of(&pod.manifest)),
            ["pod", "uuid"] => ("GET", Response::text(200, pod.uuid.to_string())),
            ["pod", "hmac", "sign"] => ("POST", self.sign(pod.uuid, req)),
            ["pod", "hmac", "verify"] => ("POST", self.verify(req)),
            ["apps", app, rest @ ..] => {
                let Some(image) = pod.apps.get(*app) else {
                    return Response::text(404, format!("app {app:?} not found"));
                };
                match rest {
                    ["annotations"] => (
                        "GET",
                        json_of(&Value::from(pod.app_annotations(app).unwrap_or_default())),
                    ),
                    ["annotations", name] => (
                        "GET",
                        annotation(&Value::from(pod.app_annotations(app).unwrap_or_default()), name),
                    ),
                    ["image", "manifest"] => ("GET", json_of(image)),
                    ["image", "id"] => match pod.runtime_app(app).and_then(|a| a["image"]["id"].as_str()) {
                        Some(id) => ("GET", Response::text(200, id)),
                        None => ("GET", Response::text(404, format!("app {app:?} has no image ID"))),
                    },
                    _ => return Response::text(404, "not found"),
                }
            }
            _ => return Response::text(404, "not found"),
        };
        if method != needs {
            return Response::text(405, format!("use {needs}"));
        }
        answer
    }

    fn mac(&self, uuid: Uuid, content: &str) -> HmacSha512 {
        let mut mac = match HmacSha512::new_from_slice(&self.key) {
            Ok(mac) => mac,
            // HMAC takes keys of any length.
            Err(_) => unreachable!("HMAC refused a 64-byte key"),
        };
        mac.update(uuid.as_bytes());
        mac.update(content.as_bytes());
        mac
    }

    /// base64(HMAC-SHA512(key, uuid bytes ++ content)) for the calling pod.
    fn sign(&self, uuid: Uuid, req: &Request) -> Response {
        let Some(content) = req.form_value("content").filter(|c| !c.is_empty()) else {
            return Response::text(400, "form value content is missing");
        };
        let signature = self.mac(uuid, &content).finalize().into_bytes();
        Response::text(200, base64::engine::general_purpose::STANDARD.encode(signature))
    }

    /// 200 when `signature` is this instance's signature of `content` by pod
    /// `uuid`, 403 when it is not.
    fn verify(&self, req: &Request) -> Response {
        let Some(uuid) = req.form_value("uuid").and_then(|u| Uuid::parse_str(&u).ok()) else {
            return Response::text(400, "form value uuid is missing or malformed");
        };
        let Some(content) = req.form_value("content").filter(|c| !c.is_empty()) else {
            return Response::text(400, "form value content is missing");
        };
        let Some(signature) = req
            .form_value("signature")
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        else {
            return Response::text(400, "form value signature is missing or not base64");
        };
        match self.mac(uuid, &content).verify_slice(&signature) {
            Ok(()) => Response::text(200, ""),
            Err(_) => Response::text(403, "signature mismatch"),
        }
    }
}

fn json_of(value: &Value) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::json(body),
        Err(e) => Response::text(500, e.to_string()),
    }
}

fn annotation(list: &Value, name: &str) -> Response {
    let found = list
        .as_array()
        .and_then(|l| l.iter().find(|a| a["name"] == name))
        .and_then(|a| a["value"].as_str());
    match found {
        Some(value) => Response::text(200, value),
        None => Response::text(404, format!("annotation {name:?} not found")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn get(target: &str) -> Request {
        request("GET", target, &[("Metadata-Flavor", "AppContainer")], "")
    }

    fn form(target: &str, body: &str) -> Request {
        request(
            "POST",
            target,
            &[
                ("Metadata-Flavor", "AppContainer"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body,
        )
    }

    fn registered() -> (Service, Uuid) {
        let service = Service::new([7; 64], 18112);
        let uuid = Uuid::new_v4();
        let manifest = json!({"acKind": "PodManifest", "apps": [{"name": "app", "image": {"id": "sha512-abc"}}],
            "annotations": [{"name": "p", "value": "v"}]});
        let put = request(
            "PUT",
            &format!("/pods/{uuid}?token={TOKEN}"),
            &[],
            &manifest.to_string(),
        );
        let answer = service.registration(&put);
        assert_eq!(answer.status, 200);
        assert!(answer.headers.contains(&(PORT_HEADER, "18112".into())));
        let image = json!({"name": "example.com/app", "annotations": [{"name": "i", "value": "w"}]});
        let put = request("PUT", &format!("/pods/{uuid}/app"), &[], &image.to_string());
        assert_eq!(service.registration(&put).status, 200);
        (service, uuid)
    }

    #[test]
    fn endpoints_answer_with_the_spec_content_types() {
        let (service, uuid) = registered();
        let base = format!("/{TOKEN}/acMetadata/v1");
        let uuid_answer = service.public(&get(&format!("{base}/pod/uuid")));
        assert_eq!(
            (uuid_answer.status, uuid_answer.content_type),
            (200, "text/plain; charset=us-ascii")
        );
        assert_eq!(uuid_answer.body, uuid.to_string().into_bytes());
        let id = service.public(&get(&format!("{base}/apps/app/image/id")));
        assert_eq!(id.body, b"sha512-abc");
        let annotations = service.public(&get(&format!("{base}/pod/annotations")));
        assert_eq!(annotations.content_type, "application/json");
        assert_eq!(annotations.body, br#"[{"name":"p","value":"v"}]"#);
        let one = service.public(&get(&format!("{base}/apps/app/annotations/i")));
        assert_eq!(one.body, b"w");
        let image = service.public(&get(&format!("{base}/apps/app/image/manifest")));
        assert_eq!(image.status, 200);
        assert_eq!(
            service.public(&get(&format!("{base}/apps/nope/image/id"))).status,
            404
        );
        assert_eq!(service.public(&get(&format!("{base}/pod/nothing"))).status, 404);
        let post = request(
            "POST",
            &format!("{base}/pod/uuid"),
            &[("Metadata-Flavor", "AppContainer")],
            "",
        );
        assert_eq!(service.public(&post).status, 405);
    }

    #[test]
    fn flavor_header_and_a_known_token_are_required() {
        let (service, uuid) = registered();
        let plain = request("GET", &format!("/{TOKEN}/acMetadata/v1/pod/uuid"), &[], "");
        assert_eq!(service.public(&plain).status, 400);
        let stranger = get("/ffffffffffffffffffffffffffffffff/acMetadata/v1/pod/uuid");
        assert_eq!(service.public(&stranger).status, 401);
        let delete = request("DELETE", &format!("/pods/{uuid}"), &[], "");
        assert_eq!(service.registration(&delete).status, 200);
        let gone = get(&format!("/{TOKEN}/acMetadata/v1/pod/uuid"));
        assert_eq!(service.public(&gone).status, 401);
        assert_eq!(service.registration(&delete).status, 404);
    }

    #[test]
    fn a_signature_verifies_for_its_pod_and_content_only() {
        let (service, uuid) = registered();
        let base = format!("/{TOKEN}/acMetadata/v1");
        let signed = service.public(&form(&format!("{base}/pod/hmac/sign"), "content=Old+MacDonald"));
        assert_eq!(signed.status, 200);
        let signature = String::from_utf8(signed.body).unwrap();
        assert!(!signature.ends_with('\n'));
        let encoded: String = signature
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let verify = |content: &str, uuid: &Uuid| {
            service
                .public(&form(
                    &format!("{base}/pod/hmac/verify"),
                    &format!("content={content}&uuid={uuid}&signature={encoded}"),
                ))
                .status
        };
        assert_eq!(verify("Old+MacDonald", &uuid), 200);
        assert_eq!(verify("Old+McDonald", &uuid), 403);
        assert_eq!(verify("Old+MacDonald", &Uuid::new_v4()), 403);
        let other = Service::new([8; 64], 18112);
        let (_, _) = (&other, ());
        assert_ne!(
            other.mac(uuid, "Old MacDonald").finalize().into_bytes(),
            service.mac(uuid, "Old MacDonald").finalize().into_bytes(),
            "each instance has its own key"
        );
    }

    #[test]
    fn bad_registrations_are_refused() {
        let service = Service::new([7; 64], 1);
        let short = request("PUT", &format!("/pods/{}?token=abc", Uuid::new_v4()), &[], "{}");
        assert_eq!(service.registration(&short).status, 400);
        let not_json = request(
            "PUT",
            &format!("/pods/{}?token={TOKEN}", Uuid::new_v4()),
            &[],
            "[",
        );
        assert_eq!(service.registration(&not_json).status, 400);
        let bad_uuid = request("PUT", &format!("/pods/x?token={TOKEN}"), &[], "{}");
        assert_eq!(service.registration(&bad_uuid).status, 400);
        let no_pod = request("PUT", &format!("/pods/{}/app", Uuid::new_v4()), &[], "{}");
        assert_eq!(service.registration(&no_pod).status, 404);
    }
}
