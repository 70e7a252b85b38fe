//! Randomized soak under fault injection, the bad-input table, and the
//! payment-against-cancellation race that the soak once caught: one test
//! binary, a module each.
//!
//! `randomized_soak_under_faults`: the whole mesh in-process, the
//! participants wrapped in the fault layer (`microshop_runtime::faults`:
//! UNAVAILABLE and DEADLINE_EXCEEDED before the handler, delays, duplicated
//! deliveries, answers lost after the effect, actions landing after their
//! compensation). Concurrent clients place, pay for and cancel orders over
//! random SKUs (a few hot, low-stock ones), coupons (one nearly exhausted)
//! and point redemptions, resend requests with the same idempotency key,
//! race payment against cancellation and against the payment-expiry saga,
//! abort sagas that a held-back action made FAILED. Every answer must be a
//! contract answer (`docs/api.md`, "Errors"); a resent key must answer the
//! same outcome.
//!
//! Then faults are switched off, held-back actions land, FAILED sagas are
//! retried with RetrySaga, unpaid orders expire, and once nothing moves the
//! invariants of `docs/architecture.md` are checked.
//!
//! Seeded: the seed is printed (`SOAK_SEED=<n>` replays its decisions; the
//! interleaving of concurrent clients is up to the scheduler). The default
//! run makes at least 10,000 client calls; `SOAK_LONG=1` makes 200,000
//! (`SOAK_OPS=<n>` sets any count).
//!
//! - `randomized`: the soak itself and its resend rule;
//! - `bad_input`: every malformed field of the public API, with its
//!   contract code and no effect;
//! - `payment_race`: a cancellation landing mid-payment.

use std::time::Duration;

/// Bound of a settling phase: the soak's after its run, the race's
/// waits for its gate.
const SETTLE_WITHIN: Duration = Duration::from_secs(90);

mod bad_input;
mod payment_race;
mod randomized;
