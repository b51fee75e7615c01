//! The conformance suite on the sqlite store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

postoffice_conformance::conformance_tests!(postoffice_conformance::harness::SqliteHarness);
