//! The pricing settings a shop sets at start-up (`docs/api.md`): the
//! flags and `MICROSHOP_*` variables, and the checks that refuse to start
//! on a value that would price orders wrongly.
//!
//! `microshop serve order`, `microshop up` and `microshop demo` flatten
//! [`PricingArgs`]; `serve loyalty` reads its `--earn-amount-per-point`, so
//! the mesh has one value for both the orders that record the rate and the
//! service that earns by it. Validation happens before any port is bound,
//! and names the offending setting by flag and variable, because a wrong
//! tax rate or currency silently misprices every order that follows.

use crate::{
    currency::Currency,
    pricing::{BASIS_POINTS, PricingRules},
};
use microshop_runtime::validate::MAX_AMOUNT;

/// Pricing settings, as flags and environment variables. The defaults are
/// the seed rules ([`PricingRules::default`]).
#[derive(Clone, Debug, clap::Args)]
pub struct PricingArgs {
    /// Tax in basis points of the items price, before discounts (1000 =
    /// 10%, 825 = 8.25%), rounded half up to the smallest currency unit;
    /// 0 to 10000.
    #[arg(
        long,
        env = "MICROSHOP_TAX_RATE_BP",
        default_value_t = 1_000,
        allow_negative_numbers = true
    )]
    pub tax_rate_bp: i64,

    /// Shipping price (smallest currency unit), charged below
    /// --free-shipping-from; never taxed.
    #[arg(
        long,
        env = "MICROSHOP_SHIPPING_PRICE",
        default_value_t = 50_000,
        allow_negative_numbers = true
    )]
    pub shipping_price: i64,

    /// Items price (smallest currency unit) from which shipping is free;
    /// 0 means shipping is always free.
    #[arg(
        long,
        env = "MICROSHOP_FREE_SHIPPING_FROM",
        default_value_t = 2_000_000,
        allow_negative_numbers = true
    )]
    pub free_shipping_from: i64,

    /// What one redeemed loyalty point takes off (smallest currency unit);
    /// greater than zero.
    #[arg(
        long,
        env = "MICROSHOP_POINT_VALUE",
        default_value_t = 1_000,
        allow_negative_numbers = true
    )]
    pub point_value: i64,

    /// Amount paid (smallest currency unit) that earns one loyalty point;
    /// greater than zero. Each order records it, and its payment earns at
    /// the recorded rate.
    #[arg(
        long,
        env = "MICROSHOP_EARN_AMOUNT_PER_POINT",
        default_value_t = 100_000,
        allow_negative_numbers = true
    )]
    pub earn_amount_per_point: i64,

    /// ISO 4217 code of the currency of every amount, catalog prices
    /// included (amounts are in its smallest unit, e.g. cents for USD).
    /// Changing it converts nothing.
    #[arg(long, env = "MICROSHOP_CURRENCY", default_value = "VND")]
    pub currency: String,
}

impl Default for PricingArgs {
    fn default() -> Self {
        let PricingRules {
            tax_rate_bp,
            shipping_price,
            free_shipping_from,
            point_value,
            earn_amount_per_point,
            currency,
        } = PricingRules::default();
        Self {
            tax_rate_bp,
            shipping_price,
            free_shipping_from,
            point_value,
            earn_amount_per_point,
            currency: currency.to_string(),
        }
    }
}

/// Settings that would price orders wrongly; the service must not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid pricing settings: {}", .problems.join("; "))]
pub struct InvalidPricing {
    /// One plain-English line per bad setting, naming its flag and variable.
    pub problems: Vec<String>,
}

/// How a setting is named to the operator.
fn setting(flag: &str, env: &str) -> String {
    format!("--{flag} ({env})")
}

fn check_range(
    problems: &mut Vec<String>,
    (flag, env): (&str, &str),
    value: i64,
    min: i64,
    max: i64,
    unit: &str,
) {
    if value < 0 {
        problems.push(format!(
            "{} must not be negative, got {value}",
            setting(flag, env)
        ));
    } else if !(min..=max).contains(&value) {
        problems.push(format!(
            "{} must be {min} to {max}{unit}, got {value}",
            setting(flag, env)
        ));
    }
}

/// Checks every rule: none negative, tax at most 100% (10,000 bp), point
/// value and earn rate greater than zero, amounts at most
/// [`MAX_AMOUNT`], an ISO 4217 currency.
pub fn check(rules: &PricingRules) -> Result<(), InvalidPricing> {
    let PricingRules {
        tax_rate_bp,
        shipping_price,
        free_shipping_from,
        point_value,
        earn_amount_per_point,
        currency,
    } = *rules;
    let mut problems = Vec::new();
    check_range(
        &mut problems,
        ("tax-rate-bp", "MICROSHOP_TAX_RATE_BP"),
        tax_rate_bp,
        0,
        BASIS_POINTS,
        " basis points (10000 = 100%)",
    );
    check_range(
        &mut problems,
        ("shipping-price", "MICROSHOP_SHIPPING_PRICE"),
        shipping_price,
        0,
        MAX_AMOUNT,
        "",
    );
    check_range(
        &mut problems,
        ("free-shipping-from", "MICROSHOP_FREE_SHIPPING_FROM"),
        free_shipping_from,
        0,
        MAX_AMOUNT,
        " (0: shipping is always free)",
    );
    check_range(
        &mut problems,
        ("point-value", "MICROSHOP_POINT_VALUE"),
        point_value,
        1,
        MAX_AMOUNT,
        "",
    );
    check_range(
        &mut problems,
        ("earn-amount-per-point", "MICROSHOP_EARN_AMOUNT_PER_POINT"),
        earn_amount_per_point,
        1,
        MAX_AMOUNT,
        "",
    );
    if currency.minor_units().is_none() {
        problems.push(format!(
            "{} {currency:?} is not an ISO 4217 currency code",
            setting("currency", "MICROSHOP_CURRENCY")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InvalidPricing { problems })
    }
}

impl PricingArgs {
    /// The validated rules these settings make.
    pub fn rules(&self) -> Result<PricingRules, InvalidPricing> {
        let Self {
            tax_rate_bp,
            shipping_price,
            free_shipping_from,
            point_value,
            earn_amount_per_point,
            currency,
        } = self;
        let mut problems = Vec::new();
        let currency = currency.parse::<Currency>().unwrap_or_else(|unknown| {
            problems.push(format!(
                "{}: {unknown}",
                setting("currency", "MICROSHOP_CURRENCY")
            ));
            Currency::default()
        });
        let rules = PricingRules {
            tax_rate_bp: *tax_rate_bp,
            shipping_price: *shipping_price,
            free_shipping_from: *free_shipping_from,
            point_value: *point_value,
            earn_amount_per_point: *earn_amount_per_point,
            currency,
        };
        if let Err(invalid) = check(&rules) {
            problems.extend(invalid.problems);
        }
        if problems.is_empty() {
            Ok(rules)
        } else {
            Err(InvalidPricing { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_seed_rules() {
        assert_eq!(PricingArgs::default().rules(), Ok(PricingRules::default()));
    }

    #[test]
    fn usd_at_8_25_percent_is_accepted() {
        let args = PricingArgs {
            tax_rate_bp: 825,
            shipping_price: 599,
            free_shipping_from: 0,
            point_value: 1,
            earn_amount_per_point: 100,
            currency: "usd".into(),
        };
        let rules = args.rules().expect("valid");
        assert_eq!(rules.currency.as_str(), "USD");
        assert_eq!(rules.tax_rate_bp, 825);
        assert_eq!(rules.free_shipping_from, 0);
    }

    fn problems(args: PricingArgs) -> Vec<String> {
        args.rules().expect_err("refused").problems
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: [(PricingArgs, &str); 9] = [
            (
                PricingArgs {
                    tax_rate_bp: -1,
                    ..Default::default()
                },
                "--tax-rate-bp (MICROSHOP_TAX_RATE_BP) must not be negative",
            ),
            (
                PricingArgs {
                    tax_rate_bp: 10_001,
                    ..Default::default()
                },
                "--tax-rate-bp (MICROSHOP_TAX_RATE_BP) must be 0 to 10000",
            ),
            (
                PricingArgs {
                    shipping_price: -5,
                    ..Default::default()
                },
                "--shipping-price (MICROSHOP_SHIPPING_PRICE) must not be negative",
            ),
            (
                PricingArgs {
                    free_shipping_from: -1,
                    ..Default::default()
                },
                "--free-shipping-from (MICROSHOP_FREE_SHIPPING_FROM) must not be negative",
            ),
            (
                PricingArgs {
                    point_value: 0,
                    ..Default::default()
                },
                "--point-value (MICROSHOP_POINT_VALUE) must be 1 to",
            ),
            (
                PricingArgs {
                    point_value: -3,
                    ..Default::default()
                },
                "--point-value (MICROSHOP_POINT_VALUE) must not be negative",
            ),
            (
                PricingArgs {
                    earn_amount_per_point: 0,
                    ..Default::default()
                },
                "--earn-amount-per-point (MICROSHOP_EARN_AMOUNT_PER_POINT) must be 1 to",
            ),
            (
                PricingArgs {
                    currency: "XYZ".into(),
                    ..Default::default()
                },
                "--currency (MICROSHOP_CURRENCY): \"XYZ\" is not an ISO 4217 currency code",
            ),
            (
                PricingArgs {
                    currency: "dollars".into(),
                    ..Default::default()
                },
                "--currency (MICROSHOP_CURRENCY): \"dollars\" is not",
            ),
        ];
        for (args, want) in cases {
            let got = problems(args);
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(
                got[0].starts_with(want),
                "{:?} does not start with {want:?}",
                got[0]
            );
        }
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let got = problems(PricingArgs {
            tax_rate_bp: 20_000,
            point_value: 0,
            currency: "???".into(),
            ..Default::default()
        });
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn a_100_percent_tax_and_free_shipping_from_zero_are_allowed() {
        let rules = PricingArgs {
            tax_rate_bp: BASIS_POINTS,
            free_shipping_from: 0,
            shipping_price: 0,
            ..Default::default()
        }
        .rules()
        .expect("valid");
        assert_eq!(rules.tax_rate_bp, BASIS_POINTS);
    }

    #[test]
    fn recorded_rules_with_an_unknown_currency_fail_the_check() {
        let rules = PricingRules {
            currency: Currency::try_from("BGN").expect("three letters"),
            ..PricingRules::default()
        };
        let err = check(&rules).expect_err("BGN is withdrawn");
        assert!(
            err.to_string().contains("--currency (MICROSHOP_CURRENCY)"),
            "{err}"
        );
    }
}
