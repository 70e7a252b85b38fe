//! The microshop mesh as a library: start all four services in one
//! process ([`mesh`]), check the invariants of `docs/architecture.md` over
//! their APIs ([`invariants`]), and the demo of the old shop's failures
//! ([`demo`]), the operator's `microshop sagas` CLI ([`sagas`]), the
//! command line ([`cli`]) and the flag tables of `docs/configuration.md`
//! rendered from it ([`config_doc`]). The binary is a thin CLI over these;
//! tests and the benchmark use them directly.

pub mod bench;
pub mod cli;
pub mod config_doc;
pub mod demo;
pub mod invariants;
pub mod mesh;
pub mod sagas;
