//! The one place wire (prost) types and domain types meet. Every message is
//! destructured field by field, so a field added to the proto breaks the
//! build here until it is handled.

use microshop_proto::loyalty::v1 as pb;

use crate::domain::Account;

impl From<Account> for pb::GetBalanceResponse {
    fn from(account: Account) -> Self {
        let Account {
            customer_id,
            points,
            member,
            granted,
            earned,
            deducted,
            refunded,
        } = account;
        Self {
            customer_id,
            points,
            member,
            granted,
            earned,
            deducted,
            refunded,
        }
    }
}

impl From<pb::GetBalanceResponse> for Account {
    fn from(balance: pb::GetBalanceResponse) -> Self {
        let pb::GetBalanceResponse {
            customer_id,
            points,
            member,
            granted,
            earned,
            deducted,
            refunded,
        } = balance;
        Self {
            customer_id,
            points,
            member,
            granted,
            earned,
            deducted,
            refunded,
        }
    }
}

impl From<Account> for pb::GrantPointsResponse {
    fn from(account: Account) -> Self {
        let Account {
            customer_id,
            points,
            member,
            granted: _,  // not on the wire: see GetBalance
            earned: _,   // idem
            deducted: _, // idem
            refunded: _, // idem
        } = account;
        Self {
            customer_id,
            points,
            member,
        }
    }
}
