//! Benchmarks live in `benches/relay.rs`; run `cargo bench -p postoffice-benches`.
