//! The response future of [`JsonCloudEvents`](crate::JsonCloudEvents): the
//! same future as core's JSON layer, since both fail only when encoding fails.

pub use postoffice_core::json::future::ResponseFuture;
