//! Loyalty domain types, free of wire and storage concerns.

use serde::{Deserialize, Serialize};

/// Most points one GrantPoints may add.
pub const MAX_GRANT: i64 = 1_000_000_000;

/// Default earn rate: one point per this much paid (smallest currency unit).
pub const DEFAULT_EARN_AMOUNT_PER_POINT: i64 = 100_000;

/// A customer's points and the ledger totals behind them.
/// Invariant: points = granted + earned - deducted + refunded >= 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Customer id.
    pub customer_id: String,
    /// Points available to redeem.
    pub points: i64,
    /// Whether the customer is a loyalty member (only members redeem or earn).
    pub member: bool,
    /// Total points granted.
    pub granted: i64,
    /// Total points earned from paid orders.
    pub earned: i64,
    /// Total points deducted by checkouts.
    pub deducted: i64,
    /// Total points given back by compensations.
    pub refunded: i64,
}

impl Account {
    /// The account of a customer never seen: no points, not a member.
    pub fn guest(customer_id: impl Into<String>) -> Self {
        Self {
            customer_id: customer_id.into(),
            points: 0,
            member: false,
            granted: 0,
            earned: 0,
            deducted: 0,
            refunded: 0,
        }
    }

    /// Whether the ledger invariant holds.
    pub fn is_consistent(&self) -> bool {
        self.points >= 0
            && self
                .granted
                .checked_add(self.earned)
                .and_then(|v| v.checked_sub(self.deducted))
                .and_then(|v| v.checked_add(self.refunded))
                == Some(self.points)
    }

    /// The account after granting `points` (which enrols it as a member);
    /// `None` if a total would overflow.
    pub fn with_granted(&self, points: i64) -> Option<Self> {
        Some(Self {
            points: self.points.checked_add(points)?,
            granted: self.granted.checked_add(points)?,
            member: true,
            ..self.clone()
        })
    }

    /// The account after deducting `points`; `None` if the balance is short
    /// or a total would overflow.
    pub fn with_deducted(&self, points: i64) -> Option<Self> {
        let left = self.points.checked_sub(points).filter(|p| *p >= 0)?;
        Some(Self {
            points: left,
            deducted: self.deducted.checked_add(points)?,
            ..self.clone()
        })
    }

    /// The account after refunding `points`; `None` if a total would
    /// overflow.
    pub fn with_refunded(&self, points: i64) -> Option<Self> {
        Some(Self {
            points: self.points.checked_add(points)?,
            refunded: self.refunded.checked_add(points)?,
            ..self.clone()
        })
    }

    /// The account after earning `points`; `None` if a total would overflow.
    pub fn with_earned(&self, points: i64) -> Option<Self> {
        Some(Self {
            points: self.points.checked_add(points)?,
            earned: self.earned.checked_add(points)?,
            ..self.clone()
        })
    }
}

/// Points earned for `amount_paid` at one point per `amount_per_point`
/// (rounded down; zero for a non-positive rate or amount).
pub fn points_for(amount_paid: i64, amount_per_point: i64) -> i64 {
    if amount_paid <= 0 || amount_per_point <= 0 {
        0
    } else {
        amount_paid / amount_per_point
    }
}

/// What a checkout's sagas did to its customer's points, by the checkout's
/// saga id: the business record a cancel refunds from and a payment earns
/// once by, kept for as long as the order (the barrier's replay markers
/// expire after the barrier retention; this does not).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPoints {
    /// The customer.
    pub customer_id: String,
    /// Points the checkout deducted.
    pub deducted: i64,
    /// Points given back (the whole deduction, once).
    pub refunded: i64,
    /// Points the payment earned, once it did.
    pub earned: Option<i64>,
}

/// The outcome of DeductPoints, replayed to repeated deliveries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeductOutcome {
    /// The points were taken.
    Deducted {
        /// Customer the points were taken from.
        customer_id: String,
        /// Points taken.
        points: i64,
        /// Balance after the deduction.
        balance: i64,
    },
    /// The customer is unknown or not a member: nothing taken.
    NotAMember,
    /// The balance is short: nothing taken.
    InsufficientPoints {
        /// Points the customer had.
        balance: i64,
        /// Points asked.
        requested: i64,
    },
}

/// The outcome of RefundPoints (the compensation of DeductPoints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundOutcome {
    /// The saga's deduction was given back.
    Refunded {
        /// Customer the points went back to.
        customer_id: String,
        /// Points given back.
        points: i64,
    },
    /// The saga deducted nothing (null compensation).
    NothingDeducted,
}

impl RefundOutcome {
    /// Points given back (0 for a null compensation).
    pub fn points(&self) -> i64 {
        match self {
            Self::Refunded { points, .. } => *points,
            Self::NothingDeducted => 0,
        }
    }
}

/// The outcome of EarnPoints, replayed to repeated deliveries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EarnOutcome {
    /// The points were credited (possibly 0 for a small amount).
    Earned {
        /// Customer credited.
        customer_id: String,
        /// Points credited.
        points: i64,
        /// Balance after the credit.
        balance: i64,
    },
    /// The customer is unknown or not a member: nothing credited.
    NotAMember {
        /// The customer's unchanged balance.
        balance: i64,
    },
}

impl EarnOutcome {
    /// Points credited and the balance after: `(points, balance)`.
    pub fn points_and_balance(&self) -> (i64, i64) {
        match self {
            Self::Earned {
                points, balance, ..
            } => (*points, *balance),
            Self::NotAMember { balance } => (0, *balance),
        }
    }
}
