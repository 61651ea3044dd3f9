//! The modalities the toolkit knows, by name. [`ModalityRegistry::with_builtins`] holds audio,
//! image, video (with the `video` feature) and IMU; a user adds their own with
//! [`register`](ModalityRegistry::register) and hands the registry to the toolkit.

use std::sync::Arc;

use crate::modality::AnyModality;
use crate::{Error, Result};

#[derive(Clone, Default)]
pub struct ModalityRegistry {
    modalities: Vec<Arc<dyn AnyModality>>,
}

impl ModalityRegistry {
    /// No modality at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in modalities.
    pub fn with_builtins() -> Self {
        let mut r = Self::empty();
        let builtins: Vec<Arc<dyn AnyModality>> = vec![
            Arc::new(crate::audio::AudioModality::default()),
            Arc::new(crate::image::ImageModality::default()),
            #[cfg(feature = "video")]
            Arc::new(crate::video::VideoModality::default()),
            Arc::new(crate::imu::ImuModality::default()),
        ];
        for m in builtins {
            r.modalities.push(m);
        }
        r
    }

    /// Adds a modality; its name must be new (a lower-case identifier: it is the manifest key
    /// and goes into the `<name>` placeholder).
    pub fn register(&mut self, modality: impl AnyModality + 'static) -> Result<&mut Self> {
        let name = modality.name().to_string();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            return Err(Error::InvalidModalityName { name });
        }
        if self.modalities.iter().any(|m| m.name() == name) {
            return Err(Error::DuplicateModality { name });
        }
        self.modalities.push(Arc::new(modality));
        Ok(self)
    }

    /// The modality called `name`; the error lists the known ones.
    pub fn get(&self, name: &str) -> Result<Arc<dyn AnyModality>> {
        self.modalities
            .iter()
            .find(|m| m.name() == name)
            .cloned()
            .ok_or_else(|| Error::UnknownModality {
                name: name.to_string(),
                known: self.names(),
            })
    }

    /// Names in registration order.
    pub fn names(&self) -> Vec<String> {
        self.modalities
            .iter()
            .map(|m| m.name().to_string())
            .collect()
    }
}
