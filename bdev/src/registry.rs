//! Name → device map for the management plane (the data path holds `Arc`s directly).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::BlockDevice;

/// Errors of the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A device of that name exists.
    #[error("bdev {0} already exists")]
    Exists(String),
    /// No device of that name.
    #[error("bdev {0} does not exist")]
    NotFound(String),
}

/// All block devices of the daemon, by name.
#[derive(Debug, Default)]
pub struct BdevRegistry {
    map: RwLock<BTreeMap<String, Arc<dyn BlockDevice>>>,
}

impl BdevRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a device under its own name.
    pub fn insert(&self, dev: Arc<dyn BlockDevice>) -> Result<(), RegistryError> {
        let mut m = self.map.write().expect("registry lock");
        let name = dev.info().name.clone();
        if m.contains_key(&name) {
            return Err(RegistryError::Exists(name));
        }
        m.insert(name, dev);
        Ok(())
    }

    /// Looks a device up.
    pub fn get(&self, name: &str) -> Result<Arc<dyn BlockDevice>, RegistryError> {
        self.map
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))
    }

    /// True if a device of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.map.read().expect("registry lock").contains_key(name)
    }

    /// Removes a device. Users still holding it keep a working reference until they drop it.
    pub fn remove(&self, name: &str) -> Result<Arc<dyn BlockDevice>, RegistryError> {
        self.map
            .write()
            .expect("registry lock")
            .remove(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))
    }

    /// Every device, sorted by name.
    pub fn list(&self) -> Vec<Arc<dyn BlockDevice>> {
        self.map
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }
}
