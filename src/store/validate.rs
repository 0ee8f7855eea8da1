//! The rules request values follow, shared by the resources: limits, names,
//! numbers, weekly-window times, base URLs, timezones and timestamps, and
//! the patterns the OpenAPI document shows for them (the unit tests check
//! that each documented pattern is the rule applied).

use obleth_filters::access::known_timezone;

use super::StoreError;

/// Longest group, tenant or key name, in characters.
pub const NAME_MAX: usize = 100;
/// Longest model name or alias.
pub const MODEL_NAME_MAX: usize = 200;
/// Largest fair-share or admission weight: weights are ratios, and a cap
/// keeps their products far from overflow.
pub const WEIGHT_MAX: u32 = 1_000_000;
/// Largest concurrency cap of any kind.
pub const IN_FLIGHT_MAX: u32 = 1_000_000;
/// Largest token count (rates, budgets): 2^53 - 1, exact in every JSON
/// parser and far below the `BIGINT` columns' limit.
pub const COUNT_MAX: u64 = 9_007_199_254_740_991;
/// Largest context window a model may declare.
pub const CONTEXT_WINDOW_MAX: u32 = i32::MAX as u32;
/// Most aliases one model may have.
pub const ALIASES_MAX: usize = 64;
/// Most entries of a tenant's `allowed_models`.
pub const ALLOWED_MODELS_MAX: usize = 1000;
/// Most weekly windows of one tenant.
pub const WINDOWS_MAX: usize = 64;
/// Longest `upstream_model`.
pub const UPSTREAM_MODEL_MAX: usize = 1000;
/// Longest upstream key.
pub const UPSTREAM_KEY_MAX: usize = 4096;
/// Longest `base_url`.
pub const BASE_URL_MAX: usize = 2000;
/// Longest MCP tool name (the bound the MCP specification sets).
pub const TOOL_NAME_MAX: usize = 128;
/// Most tools in an MCP server's allowlist, and most MCP grants of a tenant.
pub const TOOLS_MAX: usize = 1000;
/// Longest MCP `auth_header`, name and value.
pub const AUTH_HEADER_MAX: usize = 8192;
/// What every tenant id starts with (see [`super::new_id`]); tenant names
/// may not, so "id or name" always means one tenant.
pub const TENANT_ID_PREFIX: &str = "ten_";

/// Group and key names: a letter or digit, then letters, digits, `.`, `_`
/// or `-` (ASCII, so no two names look alike and every name is a path
/// segment as it is).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$";
/// Tenant names: as [`NAME_PATTERN`], and never shaped like a tenant id.
pub const TENANT_NAME_PATTERN: &str = "^(?!ten_)[A-Za-z0-9][A-Za-z0-9._-]{0,99}$";
/// Model names and aliases: as [`NAME_PATTERN`], plus `:`, `/`, `@` and
/// `+` (`org/model`, `ft:base:org:id`, `model@rev`).
pub const MODEL_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$";
/// An MCP tool name: ASCII letters, digits, `_`, `-`, `.` and `/`.
pub const TOOL_NAME_PATTERN: &str = "^[A-Za-z0-9_./-]{1,128}$";
/// A tenant's grant of an MCP server: the server's name (every tool the
/// server allows), or `server/tool` (that tool only).
pub const MCP_GRANT_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(?:/[A-Za-z0-9_./-]{1,128})?$";
/// An MCP server's `auth_header`: `Name: value` (a header field name, then
/// visible ASCII, spaces and tabs), or empty to clear it.
pub const AUTH_HEADER_PATTERN: &str = "^$|^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\\t !-~]*$";
/// A weekly window's `HH:MM` bound (`24:00` ends a day).
pub const TIME_PATTERN: &str = "^(?:[01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$";
/// A `base_url`: `http(s)://host[:port][/path]`, the host a DNS name or
/// address.
pub const BASE_URL_PATTERN: &str = "^https?://(?:[A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$";
/// An upstream key: visible ASCII, as it travels in a header.
pub const UPSTREAM_KEY_PATTERN: &str = "^[!-~]*$";
/// The day names a weekly window accepts.
pub const DAYS: [&str; 14] = [
    "mon",
    "tue",
    "wed",
    "thu",
    "fri",
    "sat",
    "sun",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Checks `value` against a name rule: 1 to `max` ASCII characters, a
/// letter or digit first, then letters, digits and `extra`.
fn check_name(field: &str, value: &str, max: usize, extra: &str) -> Result<(), StoreError> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if !first_ok || !rest_ok || value.len() > max {
        return Err(StoreError::invalid(
            field,
            format!(
                "must be 1 to {max} characters: a letter or digit, then letters, digits or any of {extra:?}"
            ),
        ));
    }
    Ok(())
}

/// A group or key name.
pub fn check_plain_name(field: &str, value: &str) -> Result<(), StoreError> {
    check_name(field, value, NAME_MAX, "._-")
}

/// A tenant name: a plain name that cannot be mistaken for a tenant id.
pub fn check_tenant_name(field: &str, value: &str) -> Result<(), StoreError> {
    check_plain_name(field, value)?;
    if value.starts_with(TENANT_ID_PREFIX) {
        return Err(StoreError::invalid(
            field,
            format!("must not start with {TENANT_ID_PREFIX:?}, which tenant ids start with"),
        ));
    }
    Ok(())
}

/// A model name or alias.
pub fn check_model_name(field: &str, value: &str) -> Result<(), StoreError> {
    check_name(field, value, MODEL_NAME_MAX, "._:/@+-")
}

/// An MCP tool name ([`TOOL_NAME_PATTERN`]).
pub fn check_tool_name(field: &str, value: &str) -> Result<(), StoreError> {
    let ok = (1..=TOOL_NAME_MAX).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b));
    if !ok {
        return Err(StoreError::invalid(
            field,
            format!("must be 1 to {TOOL_NAME_MAX} characters: letters, digits or any of \"_./-\""),
        ));
    }
    Ok(())
}

/// A tenant's MCP grant ([`MCP_GRANT_PATTERN`]).
pub fn check_mcp_grant(field: &str, value: &str) -> Result<(), StoreError> {
    match value.split_once('/') {
        Some((server, tool)) => {
            check_plain_name(field, server)?;
            check_tool_name(field, tool)
        }
        None => check_plain_name(field, value),
    }
}

pub(super) fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), StoreError> {
    if value < min || value > max {
        return Err(StoreError::invalid(
            field,
            format!("must be {min} to {max}"),
        ));
    }
    Ok(())
}

pub(super) fn check_money(field: &str, value: f64) -> Result<(), StoreError> {
    if !value.is_finite() || value < 0.0 {
        return Err(StoreError::invalid(field, "must be a non-negative number"));
    }
    Ok(())
}

pub(super) fn is_time(text: &str) -> bool {
    let b = text.as_bytes();
    if text == "24:00" {
        return true;
    }
    b.len() == 5
        && b[2] == b':'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 2 || c.is_ascii_digit())
        && (b[0] < b'2' || (b[0] == b'2' && b[1] <= b'3'))
        && b[3] <= b'5'
}

/// Every IANA timezone name this machine knows (and `UTC`), sorted: the
/// values `timezone` accepts, exactly as written.
pub fn timezones() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: Vec<String> = jiff::tz::db()
            .available()
            .map(|n| n.as_str().to_string())
            .filter(|n| known_timezone(n))
            .collect();
        names.push("UTC".into());
        names.sort();
        names.dedup();
        names
    })
}

pub(super) fn default_weight() -> u32 {
    100
}

/// [`BASE_URL_PATTERN`], compiled once (a constant: the unit tests compile it).
pub(super) fn base_url_regex() -> Option<&'static regex::Regex> {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(BASE_URL_PATTERN).ok())
        .as_ref()
}

/// Timestamps travel as RFC 3339 text and are stored as Unix milliseconds.
pub mod opt_time {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v.and_then(|ms| Timestamp::from_millisecond(ms).ok()) {
            Some(t) => s.serialize_some(&t.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }

    /// An RFC 3339 date-time (`2026-01-31T09:00:00Z`, offsets `±HH:MM`,
    /// optional fractions) as Unix milliseconds; nothing looser.
    pub fn parse(text: &str) -> Result<i64, String> {
        static RFC3339: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
        let strict = RFC3339.get_or_init(|| {
            regex::Regex::new(
                r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$",
            )
            .ok()
        });
        let refuse = |why: String| format!("{text:?} is not an RFC 3339 date-time{why}");
        if !strict.as_ref().is_some_and(|r| r.is_match(text)) {
            return Err(refuse(String::new()));
        }
        text.parse::<Timestamp>()
            .map(|ts| ts.as_millisecond())
            .map_err(|e| refuse(format!(": {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        Group, KeySpec, McpGrantSchema, McpServerSpec, ModelNameSchema, ModelSpec, TenantSpec,
        ToolNameSchema, WindowSchema,
    };
    use utoipa::PartialSchema;

    fn schema_of<T: PartialSchema>() -> serde_json::Value {
        serde_json::to_value(T::schema()).unwrap_or_default()
    }

    #[test]
    fn the_documented_patterns_are_the_ones_the_checks_apply() {
        let tenant = schema_of::<TenantSpec>();
        assert_eq!(tenant["properties"]["name"]["pattern"], TENANT_NAME_PATTERN);
        assert_eq!(tenant["properties"]["group"]["pattern"], NAME_PATTERN);
        let model = schema_of::<ModelSpec>();
        assert_eq!(model["properties"]["name"]["pattern"], MODEL_NAME_PATTERN);
        assert_eq!(model["properties"]["base_url"]["pattern"], BASE_URL_PATTERN);
        assert_eq!(
            model["properties"]["upstream_key"]["pattern"],
            UPSTREAM_KEY_PATTERN
        );
        assert_eq!(
            schema_of::<ModelNameSchema>()["pattern"],
            MODEL_NAME_PATTERN
        );
        assert_eq!(
            schema_of::<KeySpec>()["properties"]["name"]["pattern"],
            NAME_PATTERN
        );
        assert_eq!(
            schema_of::<Group>()["properties"]["name"]["pattern"],
            NAME_PATTERN
        );
        let mcp = schema_of::<McpServerSpec>();
        assert_eq!(mcp["properties"]["name"]["pattern"], NAME_PATTERN);
        assert_eq!(mcp["properties"]["url"]["pattern"], BASE_URL_PATTERN);
        assert_eq!(
            mcp["properties"]["auth_header"]["pattern"],
            AUTH_HEADER_PATTERN
        );
        assert_eq!(schema_of::<ToolNameSchema>()["pattern"], TOOL_NAME_PATTERN);
        assert_eq!(schema_of::<McpGrantSchema>()["pattern"], MCP_GRANT_PATTERN);
        let window = schema_of::<WindowSchema>();
        assert_eq!(window["properties"]["start"]["pattern"], TIME_PATTERN);
        assert_eq!(tenant["properties"]["weight"]["maximum"], WEIGHT_MAX);
        assert_eq!(tenant["properties"]["budget_tokens"]["maximum"], COUNT_MAX);
        assert_eq!(
            model["properties"]["context_window"]["maximum"],
            CONTEXT_WINDOW_MAX
        );
    }

    #[test]
    fn names_follow_their_patterns() {
        for (name, plain, tenant, model) in [
            ("acme", true, true, true),
            ("a.b_c-9", true, true, true),
            ("org/model:v1@rev+x", false, false, true),
            ("ten_3f9a", true, false, true),
            ("Ten_x", true, true, true),
            ("-lead", false, false, false),
            ("", false, false, false),
            ("two words", false, false, false),
            ("café", false, false, false),
            ("line\n", false, false, false),
        ] {
            assert_eq!(check_plain_name("n", name).is_ok(), plain, "{name:?}");
            assert_eq!(check_tenant_name("n", name).is_ok(), tenant, "{name:?}");
            assert_eq!(check_model_name("n", name).is_ok(), model, "{name:?}");
        }
        assert!(check_plain_name("n", &"a".repeat(NAME_MAX)).is_ok());
        assert!(check_plain_name("n", &"a".repeat(NAME_MAX + 1)).is_err());
        assert!(check_model_name("n", &"a".repeat(MODEL_NAME_MAX + 1)).is_err());
    }

    #[test]
    fn times_urls_and_timezones_are_checked_exactly() {
        for (t, ok) in [
            ("00:00", true),
            ("23:59", true),
            ("24:00", true),
            ("24:01", false),
            ("9:05", false),
            ("+9:05", false),
            ("12:60", false),
            ("12:5", false),
        ] {
            assert_eq!(is_time(t), ok, "{t}");
        }
        let re = base_url_regex().expect("BASE_URL_PATTERN compiles");
        for (u, ok) in [
            ("https://api.example.com/v1", true),
            ("http://127.0.0.1:8000", true),
            ("http://[::1]:9/v1", true),
            ("http://h:65536/", false),
            ("ftp://h/", false),
            ("http://", false),
            ("http://h/ space", false),
        ] {
            assert_eq!(re.is_match(u), ok, "{u}");
        }
        assert!(timezones().binary_search(&"UTC".to_string()).is_ok());
        assert_eq!(
            opt_time::parse("2026-01-31T09:00:00Z"),
            Ok(1_769_850_000_000)
        );
        for loose in [
            "2026-01-31",
            "2026-01-31T09:00Z",
            "2026-01-31T09:00:00",
            "2026-01-31 09:00:00Z",
        ] {
            assert!(opt_time::parse(loose).is_err(), "{loose}");
        }
    }
}
