//! Faults below gRPC, over the real binary (issue 17): silent network
//! partitions, half-open connections, a full disk, a wrong clock, a database that is
//! not up yet and a participant URL that reaches the wrong service.
//!
//! Every service is a `microshop serve` process in a network namespace of
//! its own, on one bridge; the test itself is a host of that network, so
//! its clients can be cut off too ([`cluster::netns`]: the cut drops
//! packets in the bridge, silently, and `the_cut_is_silent` proves it).
//! The processes are the shared harness's ([`cluster::Cluster`], with each
//! service's namespace address and `ip netns exec` prefix); SecantusDB,
//! where a scenario needs a MongoDB, runs on a host of its own.
//!
//! Scenarios (`docs/testing.md`, "Faults below gRPC"), each followed by the
//! invariant check of `docs/architecture.md`:
//! 1. orchestrator ↔ inventory partition mid-burst, and the participant
//!    channels under a silent cut on their own ([`partitions`]);
//! 2. client ↔ orchestrator partition while its sagas run ([`partitions`]);
//! 3. orchestrator ↔ MongoDB partition with a second orchestrator
//!    ([`shared_log`]);
//! 4. a full disk under a participant's store and under the saga log
//!    ([`disk_full`]);
//! 5. one of two orchestrators 30 s ahead under libfaketime
//!    ([`shared_log`]);
//! 6. a database that is down when the services start ([`database_down`]);
//! 7. a participant URL that points at the wrong service
//!    ([`misconfigured`]).
//!
//! The regressions of the bugs these found carry their names. Each test
//! prints its numbers and the suite's so far, from a ledger the test
//! processes of one run share ([`suite::Tally::finish`]): the last line
//! printed is the suite's summary (scenarios, faults applied, sagas
//! driven, invariant checks, violations).
//!
//! The suite needs root, `ip` and `nft` (and, for 3, 5 and 6, SecantusDB;
//! for 5, libfaketime); without them a test is skipped with a note,
//! except under `CI`, where it fails. Scenarios run one at a time (a file
//! lock), whichever runner runs them: each starts a whole mesh, and their
//! timings (call timeouts, leases) must not be squeezed by another's load
//! on a 2-core machine.
//!
//! Nothing waits on a sleep for state: every wait is bounded polling (of
//! health, GetSaga/ListSagas, a participant's reads, a process's stderr).
//! Sleeps pace load and hold a fault for a minimum time, nothing else.

#[path = "../cluster/mod.rs"]
mod cluster;

mod database_down;
mod disk_full;
mod misconfigured;
mod partitions;
mod shared_log;
mod suite;
