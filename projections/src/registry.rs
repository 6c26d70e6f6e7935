//! The set of projections and handlers an application runs.

use crate::projection::{Handler, HandlerProjection, Projection};
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct Registry {
    projections: Vec<Arc<dyn Projection>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a projection. Names must be unique.
    pub fn projection(mut self, projection: impl Projection) -> Self {
        self.add(Arc::new(projection));
        self
    }

    /// Adds a side-effect handler.
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.add(Arc::new(HandlerProjection(handler)));
        self
    }

    pub fn add(&mut self, projection: Arc<dyn Projection>) {
        assert!(
            self.get(projection.name()).is_none(),
            "two projections are registered as '{}'; names must be unique",
            projection.name()
        );
        self.projections.push(projection);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Projection>> {
        self.projections.iter().find(|p| p.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Projection>> {
        self.projections.iter()
    }

    pub fn names(&self) -> Vec<String> {
        self.projections
            .iter()
            .map(|p| p.name().to_string())
            .collect()
    }
}
