//! Link-time registration of backends through `inventory`.
//!
//! A registration is a const struct: a name and a plain `fn` that builds the backend
//! from its configuration (an erased-serde deserializer, so the engine never knows
//! any backend's config type). Iteration order from inventory is unspecified: every
//! listing here is sorted by name, and a duplicate name is an error, not a coin toss.

use super::{ImageFinder, Labeler, Networker, Stage1};

/// Builds a backend from its stored configuration.
pub type Factory<T> = fn(&mut dyn erased_serde::Deserializer<'_>) -> Result<Box<T>, erased_serde::Error>;

pub struct Registration<T: ?Sized + 'static> {
    pub name: &'static str,
    pub factory: Factory<T>,
}

inventory::collect!(Registration<dyn Stage1>);
inventory::collect!(Registration<dyn Networker>);
inventory::collect!(Registration<dyn ImageFinder>);
inventory::collect!(Registration<dyn Labeler>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("unknown {kind} {name:?}; registered: {}", .known.join(", "))]
    Unknown {
        kind: &'static str,
        name: String,
        known: Vec<&'static str>,
    },
    #[error("{kind} {name:?} is registered twice")]
    Duplicate { kind: &'static str, name: &'static str },
    #[error("invalid configuration for {kind} {name:?}: {reason}")]
    Config {
        kind: &'static str,
        name: String,
        reason: String,
    },
}

/// Something the registry can hold; `KIND` names it in errors ("stage1", ...).
pub trait Registered: 'static {
    const KIND: &'static str;
    fn registrations() -> Vec<&'static Registration<Self>>;
}

macro_rules! registered {
    ($trait:ident, $kind:literal) => {
        impl Registered for dyn $trait {
            const KIND: &'static str = $kind;
            fn registrations() -> Vec<&'static Registration<Self>> {
                inventory::iter::<Registration<dyn $trait>>
                    .into_iter()
                    .collect()
            }
        }
    };
}

registered!(Stage1, "stage1");
registered!(Networker, "networker");
registered!(ImageFinder, "image finder");
registered!(Labeler, "labeler");

/// Registered names of one kind, sorted; refuses a name registered twice.
pub fn names<T: Registered + ?Sized>() -> Result<Vec<&'static str>, RegistryError> {
    let mut names: Vec<&'static str> = T::registrations().iter().map(|r| r.name).collect();
    names.sort_unstable();
    if let Some(dup) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(RegistryError::Duplicate {
            kind: T::KIND,
            name: dup[0],
        });
    }
    Ok(names)
}

fn find<T: Registered + ?Sized>(name: &str) -> Result<&'static Registration<T>, RegistryError> {
    let known = names::<T>()?;
    T::registrations()
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| RegistryError::Unknown {
            kind: T::KIND,
            name: name.to_string(),
            known,
        })
}

/// Builds the backend `name` with its default configuration.
pub fn create<T: Registered + ?Sized>(name: &str) -> Result<Box<T>, RegistryError> {
    restore::<T>(name, &serde_json::Value::Object(Default::default()))
}

/// Builds the backend `name` from a stored configuration value.
pub fn restore<T: Registered + ?Sized>(
    name: &str,
    config: &serde_json::Value,
) -> Result<Box<T>, RegistryError> {
    let registration = find::<T>(name)?;
    let mut erased = <dyn erased_serde::Deserializer>::erase(config);
    (registration.factory)(&mut erased).map_err(|e| RegistryError::Config {
        kind: T::KIND,
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// Every registered backend of one kind, built with its default configuration,
/// in name order.
pub fn all<T: Registered + ?Sized>() -> Result<Vec<Box<T>>, RegistryError> {
    names::<T>()?.into_iter().map(create::<T>).collect()
}

/// The on-disk form of a pod's stage1: `{"stage1": NAME, "config": {...}}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stage1Record {
    pub stage1: String,
    pub config: serde_json::Value,
}

impl Stage1Record {
    pub fn of(stage1: &dyn Stage1) -> Result<Self, serde_json::Error> {
        Ok(Stage1Record {
            stage1: stage1.name().to_string(),
            config: serde_json::to_value(stage1.config())?,
        })
    }
    pub fn restore(&self) -> Result<Box<dyn Stage1>, RegistryError> {
        restore::<dyn Stage1>(&self.stage1, &self.config)
    }
}
