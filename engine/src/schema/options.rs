//! Command-line values in rkt's syntax: `NAME,key=value,key=value` sub-options
//! (`--volume`, `--mount`), `NAME:PORT` (`--port`) and `NAME=VALUE` (`--environment`).
//!
//! One parser for the sub-option lists so every flag refuses unknown and repeated keys
//! the same way. Errors name the key (`readOnly: ...`) but not the flag: the command-line
//! parser that calls these already says which flag and value were wrong.

use super::app::{EnvVar, Port};
use super::error::SchemaError;
use super::labels::Annotation;
use super::names::ACName;
use super::pod::{ExposedPort, Mount, Volume, VolumeKind};

/// A parsed `first,key=value,...` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagOptions<'a> {
    first: Option<&'a str>,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> FlagOptions<'a> {
    /// Splits `input` on commas. With `positional`, the first item is a bare value (a
    /// volume's name); every other item must be `key=value` with a key from `known`,
    /// each at most once. `what` names the thing for messages ("volume").
    pub fn parse(input: &'a str, what: &str, positional: bool, known: &[&str]) -> Result<Self, SchemaError> {
        if input.is_empty() {
            return Err(SchemaError::invalid(
                "",
                format!("{what} options must not be empty"),
            ));
        }
        let mut items = input.split(',');
        let first = if positional {
            let first = items.next().unwrap_or_default();
            if first.contains('=') {
                return Err(SchemaError::invalid(
                    "",
                    format!(
                        "{what} options must start with the {what} name (NAME,key=value,...), got {first:?}"
                    ),
                ));
            }
            Some(first)
        } else {
            None
        };
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in items {
            let Some((key, value)) = item.split_once('=') else {
                let hint = if item.is_empty() {
                    "an empty item".to_string()
                } else {
                    format!("{item:?}")
                };
                return Err(SchemaError::invalid(
                    "",
                    format!("{what} options must be key=value, got {hint} in {input:?}"),
                ));
            };
            if !known.contains(&key) {
                return Err(SchemaError::invalid(
                    key,
                    format!("unknown {what} option (known: {})", known.join(", ")),
                ));
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(SchemaError::invalid(key, "given more than once"));
            }
            pairs.push((key, value));
        }
        Ok(Self { first, pairs })
    }

    /// The bare first item, when parsed with `positional`.
    pub fn first(&self) -> Option<&'a str> {
        self.first
    }

    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    pub fn require(&self, key: &str) -> Result<&'a str, SchemaError> {
        self.get(key)
            .ok_or_else(|| SchemaError::invalid(key, "is required"))
    }

    /// Converts a value, naming the key when the conversion fails.
    pub fn get_with<T>(
        &self,
        key: &str,
        convert: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, SchemaError> {
        self.get(key)
            .map(|v| convert(v).map_err(|reason| SchemaError::invalid(key, reason)))
            .transpose()
    }

    /// Booleans as rkt (Go's strconv) spells them: true/false, 1/0, t/f, TRUE/True...
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, SchemaError> {
        self.get_with(key, |v| match v {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            _ => Err(format!("must be true or false, got {v:?}")),
        })
    }

    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, SchemaError> {
        self.get_with(key, |v| {
            v.parse::<u32>()
                .map_err(|_| format!("must be a non-negative integer, got {v:?}"))
        })
    }
}

impl Volume {
    /// rkt's `--volume NAME,kind=host|empty,source=PATH,readOnly=BOOL,recursive=BOOL,mode=MODE,uid=N,gid=N`;
    /// kind defaults to host.
    pub fn from_flag(s: &str) -> Result<Self, SchemaError> {
        let opts = FlagOptions::parse(
            s,
            "volume",
            true,
            &["kind", "source", "readOnly", "recursive", "mode", "uid", "gid"],
        )?;
        let name = ACName::new(opts.first().unwrap_or_default()).map_err(|e| e.at("name"))?;
        let kind = opts
            .get_with("kind", |k| match k {
                "host" => Ok(VolumeKind::Host),
                "empty" => Ok(VolumeKind::Empty),
                _ => Err(format!("must be \"host\" or \"empty\", got {k:?}")),
            })?
            .unwrap_or(VolumeKind::Host);
        let volume = Volume {
            name,
            kind,
            source: opts.get("source").map(str::to_string),
            read_only: opts.get_bool("readOnly")?,
            recursive: opts.get_bool("recursive")?,
            mode: opts.get("mode").map(str::to_string),
            uid: opts.get_u32("uid")?,
            gid: opts.get_u32("gid")?,
        };
        // The manifest's field names are the flag's keys, so its errors already name the key.
        volume.validate()?;
        Ok(volume)
    }
}

/// `rkt app add --mnt-volume`: a volume the pod gets with the app, mounted
/// at `target` in that app only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MntVolume {
    pub volume: Volume,
    pub target: String,
}

impl MntVolume {
    /// rkt's `--mnt-volume name=NAME,kind=host,source=PATH,target=PATH[,readOnly=BOOL][,recursive=BOOL]`.
    /// A target with a `..` component is refused: it could only mean a way out
    /// of the app's root.
    pub fn from_flag(s: &str) -> Result<Self, SchemaError> {
        let opts = FlagOptions::parse(
            s,
            "mnt-volume",
            false,
            &["name", "kind", "source", "target", "readOnly", "recursive"],
        )?;
        let name = ACName::new(opts.require("name")?).map_err(|e| e.at("name"))?;
        match opts.get("kind").unwrap_or("host") {
            "host" => {}
            k => {
                return Err(SchemaError::invalid(
                    "kind",
                    format!("only \"host\" is supported here, got {k:?}"),
                ));
            }
        }
        let source = opts.require("source")?;
        if !source.starts_with('/') {
            return Err(SchemaError::invalid(
                "source",
                format!("must be absolute, got {source:?}"),
            ));
        }
        let target = opts.require("target")?;
        let mount = Mount {
            volume: name.clone(),
            path: target.to_string(),
        };
        mount.validate().map_err(|e| match e {
            SchemaError::Invalid { reason, .. } => SchemaError::invalid("target", reason),
            other => other,
        })?;
        if std::path::Path::new(target)
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(SchemaError::invalid(
                "target",
                format!("{target:?} must not contain \"..\" (it would lead out of the app's root)"),
            ));
        }
        let volume = Volume {
            name,
            kind: VolumeKind::Host,
            source: Some(source.to_string()),
            read_only: opts.get_bool("readOnly")?,
            recursive: opts.get_bool("recursive")?,
            mode: None,
            uid: None,
            gid: None,
        };
        volume.validate()?;
        Ok(MntVolume {
            volume,
            target: target.to_string(),
        })
    }
}

impl Mount {
    /// rkt's `--mount volume=NAME,target=PATH`.
    pub fn from_flag(s: &str) -> Result<Self, SchemaError> {
        let opts = FlagOptions::parse(s, "mount", false, &["volume", "target"])?;
        let volume = ACName::new(opts.require("volume")?).map_err(|e| e.at("volume"))?;
        let mount = Mount {
            volume,
            path: opts.require("target")?.to_string(),
        };
        mount.validate().map_err(|e| match e {
            SchemaError::Invalid { reason, .. } => SchemaError::invalid("target", reason),
            other => other,
        })?;
        Ok(mount)
    }
}

impl ExposedPort {
    /// rkt's `--port NAME:[HOSTIP:]HOSTPORT`.
    pub fn from_flag(s: &str) -> Result<Self, SchemaError> {
        let (Some((name, rest)), Some((_, port))) = (s.split_once(':'), s.rsplit_once(':')) else {
            return Err(SchemaError::invalid(
                "",
                format!("{s:?} is not in name:[hostip:]port format"),
            ));
        };
        let name = ACName::new(name).map_err(|e| e.at("name"))?;
        let host_ip = match rest.rsplit_once(':') {
            Some((ip, _)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                if ip.parse::<std::net::IpAddr>().is_err() {
                    return Err(SchemaError::invalid(
                        "hostIP",
                        format!("{ip:?} is not an IP address"),
                    ));
                }
                Some(ip.to_string())
            }
            None => None,
        };
        let host_port = match port.parse::<u16>() {
            Ok(p) if p >= 1 => p,
            _ => {
                return Err(SchemaError::invalid(
                    "hostPort",
                    format!("must be a port number in 1..=65535, got {port:?}"),
                ));
            }
        };
        Ok(ExposedPort {
            name,
            host_port: Some(host_port),
            host_ip,
            pod_port: None,
        })
    }
}

impl ExposedPort {
    /// `rkt app sandbox --port NAME:PROTO:PODPORT:HOSTIP:HOSTPORT`: a sandbox
    /// has no apps whose ports a name could refer to, so the pod side is
    /// given outright. HOSTIP may be an IPv6 address (bracketed or not);
    /// 0.0.0.0 means every address.
    pub fn from_sandbox_flag(s: &str) -> Result<Self, SchemaError> {
        let format = || {
            SchemaError::invalid(
                "",
                format!("{s:?} is not in name:proto:podPort:hostIP:hostPort format"),
            )
        };
        let mut left = s.splitn(4, ':');
        let (Some(name), Some(protocol), Some(pod_port), Some(rest)) =
            (left.next(), left.next(), left.next(), left.next())
        else {
            return Err(format());
        };
        let Some((host_ip, host_port)) = rest.rsplit_once(':') else {
            return Err(format());
        };
        let name = ACName::new(name).map_err(|e| e.at("name"))?;
        let number = |field: &str, value: &str| match value.parse::<u16>() {
            Ok(p) if p >= 1 => Ok(p),
            _ => Err(SchemaError::invalid(
                field,
                format!("must be a port number in 1..=65535, got {value:?}"),
            )),
        };
        let pod_port = Port {
            name: name.clone(),
            protocol: protocol.to_string(),
            port: number("podPort", pod_port)?,
            count: 1,
            socket_activated: false,
        };
        pod_port.validate()?;
        let host_ip = host_ip.trim_start_matches('[').trim_end_matches(']');
        if host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(SchemaError::invalid(
                "hostIP",
                format!("{host_ip:?} is not an IP address"),
            ));
        }
        Ok(ExposedPort {
            name,
            host_port: Some(number("hostPort", host_port)?),
            host_ip: Some(host_ip.to_string()),
            pod_port: Some(pod_port),
        })
    }
}

impl EnvVar {
    /// `--environment NAME=VALUE`; the value may be empty or contain `=`.
    pub fn from_flag(s: &str) -> Result<Self, SchemaError> {
        let Some((name, value)) = s.split_once('=') else {
            return Err(SchemaError::invalid(
                "",
                format!("environment variable must be specified as name=value, got {s:?}"),
            ));
        };
        EnvVar::new(name, value)
    }
}

impl Annotation {
    /// `--annotation NAME=VALUE`.
    pub fn from_flag(s: &str) -> Result<Self, SchemaError> {
        let Some((name, value)) = s.split_once('=') else {
            return Err(SchemaError::invalid(
                "",
                format!("annotation must be specified as name=value, got {s:?}"),
            ));
        };
        Annotation::new(name, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl std::fmt::Debug, SchemaError>) -> String {
        r.expect_err("should fail").to_string()
    }

    #[test]
    fn mnt_volume_takes_rkts_keys_and_refuses_a_way_out() {
        let m = MntVolume::from_flag("name=data,kind=host,source=/srv,target=/var/data,readOnly=true")
            .expect("ok");
        assert_eq!(m.volume.name.as_str(), "data");
        assert_eq!(m.volume.source.as_deref(), Some("/srv"));
        assert_eq!(m.volume.read_only, Some(true));
        assert_eq!(m.target, "/var/data");
        assert!(err(MntVolume::from_flag("name=d,source=/srv,target=/a/../../etc")).contains(".."));
        assert!(err(MntVolume::from_flag("name=d,source=srv,target=/a")).contains("absolute"));
        assert!(err(MntVolume::from_flag("name=d,kind=empty,target=/a")).contains("host"));
        assert!(err(MntVolume::from_flag("name=d,source=/srv")).contains("target"));
    }

    #[test]
    fn schema_options_generic_parser() {
        let o = FlagOptions::parse("data,kind=host,source=/srv", "volume", true, &["kind", "source"])
            .expect("ok");
        assert_eq!(o.first(), Some("data"));
        assert_eq!(o.get("kind"), Some("host"));
        assert_eq!(o.get("source"), Some("/srv"));
        assert_eq!(o.get("mode"), None);

        let o = FlagOptions::parse("a=1,b=x=y", "thing", false, &["a", "b"]).expect("ok");
        assert_eq!(o.first(), None);
        assert_eq!(o.get("b"), Some("x=y"), "only the first = splits");

        assert_eq!(
            err(FlagOptions::parse("a=1,c=2", "thing", false, &["a", "b"])),
            "c: unknown thing option (known: a, b)"
        );
        assert_eq!(
            err(FlagOptions::parse("a=1,a=2", "thing", false, &["a"])),
            "a: given more than once"
        );
        assert!(err(FlagOptions::parse("a=1,,b=2", "thing", false, &["a", "b"])).contains("an empty item"));
        assert!(
            err(FlagOptions::parse("a=1,b", "thing", false, &["a", "b"]))
                .contains("must be key=value, got \"b\"")
        );
        assert!(err(FlagOptions::parse("", "thing", false, &["a"])).contains("must not be empty"));
        assert!(
            err(FlagOptions::parse("kind=host", "volume", true, &["kind"]))
                .contains("must start with the volume name")
        );
    }

    #[test]
    fn schema_options_bools_and_ints() {
        let o = FlagOptions::parse(
            "a=True,b=0,c=yes,n=12,m=-1",
            "t",
            false,
            &["a", "b", "c", "n", "m"],
        )
        .expect("ok");
        assert_eq!(o.get_bool("a").ok(), Some(Some(true)));
        assert_eq!(o.get_bool("b").ok(), Some(Some(false)));
        assert_eq!(o.get_bool("zz").ok(), Some(None));
        assert_eq!(err(o.get_bool("c")), r#"c: must be true or false, got "yes""#);
        assert_eq!(o.get_u32("n").ok(), Some(Some(12)));
        assert!(err(o.get_u32("m")).starts_with("m: must be a non-negative integer"));
        assert_eq!(err(o.require("q")), "q: is required");
    }

    #[test]
    fn schema_volume_from_flag() {
        let v = Volume::from_flag("data,kind=host,source=/srv,readOnly=true").expect("ok");
        assert_eq!(v.name, "data");
        assert_eq!(v.kind, VolumeKind::Host);
        assert_eq!(v.source.as_deref(), Some("/srv"));
        assert_eq!(v.read_only, Some(true));

        let v = Volume::from_flag("logs,source=/var/log,recursive=false").expect("kind defaults to host");
        assert_eq!(v.kind, VolumeKind::Host);
        assert_eq!(v.recursive, Some(false));

        let v = Volume::from_flag("tmp,kind=empty,mode=1777,uid=1000,gid=100").expect("ok");
        assert_eq!((v.mode_bits(), v.uid, v.gid), (0o1777, Some(1000), Some(100)));
    }

    #[test]
    fn schema_volume_from_flag_errors_name_the_key() {
        assert_eq!(
            err(Volume::from_flag("data,readOnly=yes,source=/x")),
            r#"readOnly: must be true or false, got "yes""#
        );
        assert_eq!(
            err(Volume::from_flag("data,kind=tmpfs")),
            r#"kind: must be "host" or "empty", got "tmpfs""#
        );
        assert_eq!(
            err(Volume::from_flag("data")),
            "source: is required for kind host"
        );
        assert_eq!(
            err(Volume::from_flag("data,source=srv")),
            r#"source: must be an absolute path, got "srv""#
        );
        assert_eq!(
            err(Volume::from_flag("data,kind=empty,source=/x")),
            "source: is not allowed for kind empty"
        );
        assert!(
            err(Volume::from_flag("data,kind=empty,mode=999")).starts_with("mode: \"999\" is not an octal")
        );
        assert!(
            err(Volume::from_flag("data,kind=empty,uid=me"))
                .starts_with("uid: must be a non-negative integer")
        );
        assert_eq!(
            err(Volume::from_flag("data,source=/x,mode=0700")),
            "mode: is only allowed for kind empty"
        );
        assert!(
            err(Volume::from_flag("Data,source=/x")).starts_with("name: \"Data\" is not a valid AC Name")
        );
        assert!(err(Volume::from_flag("data,source=/x,size=1G")).starts_with("size: unknown volume option"));
        assert_eq!(
            err(Volume::from_flag("data,source=/x,source=/y")),
            "source: given more than once"
        );
    }

    #[test]
    fn schema_mount_from_flag() {
        let m = Mount::from_flag("volume=data,target=/data").expect("ok");
        assert_eq!((m.volume.as_str(), m.path.as_str()), ("data", "/data"));
        let m = Mount::from_flag("target=/data,volume=data").expect("order does not matter");
        assert_eq!(m.path, "/data");
        assert_eq!(err(Mount::from_flag("volume=data")), "target: is required");
        assert_eq!(err(Mount::from_flag("target=/d")), "volume: is required");
        assert_eq!(
            err(Mount::from_flag("volume=data,target=data")),
            r#"target: must be an absolute path, got "data""#
        );
        assert!(err(Mount::from_flag("volume=Data,target=/d")).starts_with("volume: \"Data\""));
        assert!(
            err(Mount::from_flag("volume=data,target=/d,readOnly=true"))
                .starts_with("readOnly: unknown mount option")
        );
    }

    #[test]
    fn schema_exposed_port_from_sandbox_flag() {
        let p = ExposedPort::from_sandbox_flag("web:tcp:80:0.0.0.0:8080").expect("ok");
        assert_eq!((p.host_port, p.host_ip.as_deref()), (Some(8080), Some("0.0.0.0")));
        let pod = p.pod_port.expect("pod port");
        assert_eq!((pod.protocol.as_str(), pod.port), ("tcp", 80));
        let v6 = ExposedPort::from_sandbox_flag("dns:udp:53:[::1]:5353").expect("v6");
        assert_eq!(v6.host_ip.as_deref(), Some("::1"));
        assert_eq!(
            err(ExposedPort::from_sandbox_flag("web:80")),
            r#""web:80" is not in name:proto:podPort:hostIP:hostPort format"#
        );
        assert!(err(ExposedPort::from_sandbox_flag("web:sctp:80:0.0.0.0:8080")).starts_with("protocol:"));
        assert!(err(ExposedPort::from_sandbox_flag("web:tcp:0:0.0.0.0:8080")).starts_with("podPort:"));
        assert!(err(ExposedPort::from_sandbox_flag("web:tcp:80:host:8080")).starts_with("hostIP:"));
        assert!(err(ExposedPort::from_sandbox_flag("web:tcp:80:0.0.0.0:x")).starts_with("hostPort:"));
    }

    #[test]
    fn schema_exposed_port_from_flag() {
        let p = ExposedPort::from_flag("http:8080").expect("ok");
        assert_eq!((p.name.as_str(), p.host_port), ("http", Some(8080)));
        assert_eq!(
            err(ExposedPort::from_flag("x")),
            r#""x" is not in name:[hostip:]port format"#
        );
        assert!(err(ExposedPort::from_flag("HTTP:80")).starts_with("name: \"HTTP\""));
        assert_eq!(
            err(ExposedPort::from_flag("http:0")),
            r#"hostPort: must be a port number in 1..=65535, got "0""#
        );
        assert!(err(ExposedPort::from_flag("http:65536")).starts_with("hostPort:"));
        assert!(err(ExposedPort::from_flag("http:")).starts_with("hostPort:"));
        assert!(err(ExposedPort::from_flag("http:8080:1")).starts_with("hostIP:"));
        let p = ExposedPort::from_flag("http:127.0.0.1:8080").expect("with a host IP");
        assert_eq!(
            (p.host_ip.as_deref(), p.host_port),
            (Some("127.0.0.1"), Some(8080))
        );
        let p = ExposedPort::from_flag("http:[::1]:8080").expect("IPv6 host IP");
        assert_eq!(p.host_ip.as_deref(), Some("::1"));
    }

    #[test]
    fn schema_env_var_from_flag() {
        let e = EnvVar::from_flag("PATH=/bin:/usr/bin").expect("ok");
        assert_eq!((e.name.as_str(), e.value.as_str()), ("PATH", "/bin:/usr/bin"));
        assert_eq!(EnvVar::from_flag("A=").expect("empty value").value, "");
        assert_eq!(EnvVar::from_flag("A=b=c").expect("ok").value, "b=c");
        assert_eq!(
            err(EnvVar::from_flag("NOVALUE")),
            r#"environment variable must be specified as name=value, got "NOVALUE""#
        );
        assert!(err(EnvVar::from_flag("1A=x")).starts_with("name: \"1A\""));
    }

    #[test]
    fn schema_annotation_from_flag() {
        let a = Annotation::from_flag("example.com/owner=me").expect("ok");
        assert_eq!(a.value, "me");
        assert!(Annotation::from_flag("x").is_err());
        assert!(Annotation::from_flag("X=y").is_err());
    }
}
