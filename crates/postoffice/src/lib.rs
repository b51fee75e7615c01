//! Work in progress.
pub use postoffice_core::*;
