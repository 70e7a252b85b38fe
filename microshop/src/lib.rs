//! The microshop mesh as a library: start all four services in one
//! process ([`mesh`]), check the invariants of ARCHITECTURE §8 over their
//! APIs ([`invariants`]), and the demo of the old shop's failures
//! ([`demo`]), and the operator's `microshop sagas` CLI ([`sagas`]). The
//! binary is a thin CLI over these; tests and the benchmark use them
//! directly.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod invariants;
pub mod mesh;
pub mod sagas;
