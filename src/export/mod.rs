//! Writing trained adapters in the formats other runtimes load.

pub mod mmproj;
