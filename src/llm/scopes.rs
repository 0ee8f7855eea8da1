//! Budget scopes: which limits a request counts against (its tenant's and,
//! when the key has limits of its own, its key's) and the period those
//! limits run in, in the tenant's timezone.

use jiff::Timestamp;
use obleth_filters::budget::{Limits, Scope};
use obleth_filters::records::{ApiKey, BudgetPeriod, Tenant};

/// The budget period a tenant is in at `now`: `lifetime`, or the month in
/// its timezone (`2026-11`).
pub fn budget_period(tenant: &Tenant, now: Timestamp) -> String {
    match tenant.budget_period {
        BudgetPeriod::Lifetime => "lifetime".to_string(),
        BudgetPeriod::Monthly => now.to_zoned(tenant.zone()).strftime("%Y-%m").to_string(),
    }
}

/// Unix milliseconds where the tenant's current budget period began.
pub fn period_start(tenant: &Tenant, now: Timestamp) -> u64 {
    match tenant.budget_period {
        BudgetPeriod::Lifetime => 0,
        BudgetPeriod::Monthly => now
            .to_zoned(tenant.zone())
            .start_of_day()
            .and_then(|d| d.with().day(1).build())
            .map_or(0, |d| d.timestamp().as_millisecond().max(0) as u64),
    }
}

fn usd_micros(usd: Option<f64>) -> Option<u64> {
    usd.map(|v| (v * 1e6).round().max(0.0) as u64)
}

/// The tenant's budget scope.
pub fn tenant_scope(tenant: &Tenant, now: Timestamp) -> Scope {
    Scope {
        id: format!("t:{}", tenant.id),
        limits: Limits {
            tokens_per_minute: tenant.tokens_per_minute,
            budget_tokens: tenant.budget_tokens,
            budget_usd_micros: usd_micros(tenant.budget_usd),
            period: budget_period(tenant, now),
        },
    }
}

/// A key's own budget scope (counted in its tenant's period).
pub fn key_scope(key: &ApiKey, tenant: &Tenant, now: Timestamp) -> Scope {
    Scope {
        id: format!("k:{}", key.id),
        limits: Limits {
            tokens_per_minute: key.tokens_per_minute.unwrap_or(0),
            budget_tokens: key.budget_tokens,
            budget_usd_micros: usd_micros(key.budget_usd),
            period: budget_period(tenant, now),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monthly_periods_and_their_start_follow_the_tenants_timezone() {
        let mut t = Tenant {
            id: "t".into(),
            name: "t".into(),
            group: "default".into(),
            group_weight: 100,
            weight: 100,
            tokens_per_minute: 0,
            max_in_flight: None,
            status: obleth_filters::records::TenantStatus::Active,
            timezone: "Asia/Tokyo".into(),
            active_from: None,
            active_until: None,
            weekly_windows: vec![],
            budget_tokens: Some(1),
            budget_usd: None,
            budget_period: BudgetPeriod::Monthly,
            allowed_models: vec![],
            allowed_mcp_servers: vec![],
        };
        let late_november_utc: Timestamp = "2026-11-30T16:30:00Z".parse().unwrap();
        assert_eq!(
            budget_period(&t, late_november_utc),
            "2026-12",
            "already December in Tokyo"
        );
        let tokyo_december: Timestamp = "2026-11-30T15:00:00Z".parse().unwrap();
        assert_eq!(
            period_start(&t, late_november_utc),
            tokyo_december.as_millisecond() as u64
        );
        t.timezone = "America/Los_Angeles".into();
        assert_eq!(budget_period(&t, late_november_utc), "2026-11");
        let la_november: Timestamp = "2026-11-01T07:00:00Z".parse().unwrap();
        assert_eq!(
            period_start(&t, late_november_utc),
            la_november.as_millisecond() as u64
        );
        t.budget_period = BudgetPeriod::Lifetime;
        assert_eq!(budget_period(&t, late_november_utc), "lifetime");
        assert_eq!(period_start(&t, late_november_utc), 0);
    }
}
