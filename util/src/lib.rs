//! anymal-util: the helpers every anymal crate shares, each written once.
//!
//! - [`fs`]: files written atomically (temporary file, then rename), the anymal cache folder,
//!   paths made relative to a folder;
//! - [`matmul`]: the gemm crate's f32 product on the calling thread, behind a safe call;
//! - [`par`]: output buffers filled piece by piece on all cores (candle's thread pool);
//! - [`rng`]: SplitMix64 and FNV-1a, a seeded generator and a stable hash whose streams never
//!   change with a dependency's version (weights, data orders and synthetic data depend on them);
//! - [`sha256`]: hex sha256 of files and bytes (content keys, encoder ids, checksums);
//! - [`testing`]: comparing tensors in tests.
//!
//! It depends on nothing of anymal's, so every crate of the workspace can use it.

pub mod fs;
pub mod matmul;
pub mod par;
pub mod rng;
pub mod sha256;
pub mod testing;
