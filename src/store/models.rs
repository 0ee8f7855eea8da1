//! Models: what clients name, where it is served, at what cost and
//! concurrency. Names and aliases of all models are one namespace, kept in
//! the `model_names` table.

use obleth_filters::records::Model;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use super::secrets::UpstreamKeyCipher;
use super::validate::{
    base_url_regex, check_model_name, check_money, check_range, ALIASES_MAX, BASE_URL_MAX,
    CONTEXT_WINDOW_MAX, IN_FLIGHT_MAX, UPSTREAM_KEY_MAX, UPSTREAM_MODEL_MAX, WEIGHT_MAX,
};
use super::{classify, get, get_bool, json_list, unix_ms, Store, StoreError};

const MODEL_SELECT: &str = "SELECT name, aliases, pool, base_url, upstream_model, upstream_key,
    input_cost_per_token, output_cost_per_token, max_in_flight, admission_weight, context_window, enabled FROM models";

/// A model name or alias.
#[derive(ToSchema)]
#[schema(as = ModelName, value_type = String, pattern = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")]
#[allow(dead_code)]
pub struct ModelNameSchema(String);

/// Everything an operator sets on a model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Client-facing name. Names and aliases of all models are one
    /// namespace: no string names two models.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"
    )]
    pub name: String,
    /// Other client-facing names of this model. A set: repeats and the
    /// model's own name are dropped.
    #[serde(default)]
    #[schema(value_type = Vec<ModelNameSchema>, max_items = 64)]
    pub aliases: Vec<String>,
    /// A pool of the live configuration that serves the model …
    #[serde(default)]
    pub pool: Option<String>,
    /// … or an OpenAI-compatible base URL (`https://host/v1`).
    #[serde(default)]
    #[schema(
        max_length = 2000,
        pattern = "^https?://(?:[A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$"
    )]
    pub base_url: Option<String>,
    /// Name sent upstream; empty or absent: `name`.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub upstream_model: String,
    /// Write-only; `""` clears it, absent keeps the stored one on update.
    #[serde(default, skip_serializing_if = "always")]
    #[schema(max_length = 4096, pattern = "^[!-~]*$", write_only)]
    pub upstream_key: Option<String>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub input_cost_per_token: f64,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub output_cost_per_token: f64,
    /// Concurrent requests (the model's admission pool); default 16.
    #[serde(default = "default_model_in_flight")]
    #[schema(minimum = 1, maximum = 1000000, default = 16)]
    pub max_in_flight: u32,
    /// Multiplies tenant weights in the model's pool; default 1.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000000, default = 1)]
    pub admission_weight: u32,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub context_window: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// The upstream key is write-only: never serialized (not to the API, the
/// audit log or `obleth check`), yet documented as a request field, which
/// plain `skip_serializing` would hide from the OpenAPI document.
fn always(_: &Option<String>) -> bool {
    true
}

fn default_model_in_flight() -> u32 {
    16
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

impl ModelSpec {
    /// The spec as stored: `upstream_model` defaults to the name, and the
    /// aliases are a set without the model's own name (first spelling
    /// kept, in order).
    pub fn normalized(&self) -> ModelSpec {
        let mut spec = self.clone();
        if spec.upstream_model.is_empty() {
            spec.upstream_model = spec.name.clone();
        }
        let mut seen = std::collections::HashSet::new();
        seen.insert(spec.name.clone());
        spec.aliases.retain(|a| seen.insert(a.clone()));
        spec
    }

    /// At most [`ALIASES_MAX`] aliases, counted as sent (the document's
    /// `maxItems`) and again once repeats are dropped.
    fn check_alias_count(&self) -> Result<(), StoreError> {
        if self.aliases.len() > ALIASES_MAX {
            return Err(StoreError::invalid(
                "aliases",
                format!("at most {ALIASES_MAX} aliases"),
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), StoreError> {
        check_model_name("name", &self.name)?;
        self.check_alias_count()?;
        for (i, a) in self.aliases.iter().enumerate() {
            check_model_name(&format!("aliases[{i}]"), a)?;
        }
        let upstream_len = self.upstream_model.chars().count();
        if upstream_len == 0 || upstream_len > UPSTREAM_MODEL_MAX {
            return Err(StoreError::invalid(
                "upstream_model",
                format!("must be 1 to {UPSTREAM_MODEL_MAX} characters"),
            ));
        }
        if let Some(key) = &self.upstream_key {
            if key.len() > UPSTREAM_KEY_MAX || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(StoreError::invalid(
                    "upstream_key",
                    format!("must be at most {UPSTREAM_KEY_MAX} visible ASCII characters"),
                ));
            }
        }
        match (&self.pool, &self.base_url) {
            (None, None) => return Err(StoreError::invalid("pool", "give a pool or a base_url")),
            (Some(_), Some(_)) => {
                return Err(StoreError::invalid(
                    "base_url",
                    "give a pool or a base_url, not both",
                ))
            }
            (None, Some(url))
                if url.len() > BASE_URL_MAX
                    || !base_url_regex().is_some_and(|r| r.is_match(url)) =>
            {
                return Err(StoreError::invalid(
                    "base_url",
                    "must be http(s)://host[:port][/path]",
                ))
            }
            _ => {}
        }
        check_money("input_cost_per_token", self.input_cost_per_token)?;
        check_money("output_cost_per_token", self.output_cost_per_token)?;
        check_range("max_in_flight", self.max_in_flight, 1, IN_FLIGHT_MAX)?;
        check_range("admission_weight", self.admission_weight, 1, WEIGHT_MAX)?;
        if let Some(v) = self.context_window {
            check_range("context_window", v, 1, CONTEXT_WINDOW_MAX)?;
        }
        Ok(())
    }

    /// The strings the model holds in the one namespace of names and
    /// aliases, each with the request field it comes from (for the 409).
    fn claimed_names(&self) -> impl Iterator<Item = (&'static str, &String)> {
        std::iter::once(("name", &self.name)).chain(self.aliases.iter().map(|a| ("aliases", a)))
    }

    /// What the audit log may hold: never the upstream key.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "upstream_key_set".into(),
                serde_json::Value::Bool(
                    self.upstream_key.as_deref().is_some_and(|k| !k.is_empty()),
                ),
            );
        }
        v
    }

    pub fn of(model: &Model) -> Self {
        Self {
            name: model.name.clone(),
            aliases: model.aliases.clone(),
            pool: model.pool.clone(),
            base_url: model.base_url.clone(),
            upstream_model: model.upstream_model.clone(),
            upstream_key: None,
            input_cost_per_token: model.input_cost_per_token,
            output_cost_per_token: model.output_cost_per_token,
            max_in_flight: model.max_in_flight,
            admission_weight: model.admission_weight,
            context_window: model.context_window,
            enabled: model.enabled,
        }
    }
}

pub(super) fn model_from_row(r: &AnyRow, cipher: &UpstreamKeyCipher) -> Result<Model, StoreError> {
    let sealed: Option<String> = get(r, "upstream_key")?;
    Ok(Model {
        name: get(r, "name")?,
        aliases: json_list("aliases", &get::<String>(r, "aliases")?)?,
        pool: get(r, "pool")?,
        base_url: get(r, "base_url")?,
        upstream_model: get(r, "upstream_model")?,
        upstream_key: sealed
            .map(|s| cipher.open(&s))
            .transpose()
            .map_err(StoreError::Crypto)?,
        input_cost_per_token: get(r, "input_cost_per_token")?,
        output_cost_per_token: get(r, "output_cost_per_token")?,
        max_in_flight: get::<i64>(r, "max_in_flight")? as u32,
        admission_weight: get::<i64>(r, "admission_weight")? as u32,
        context_window: get::<Option<i64>>(r, "context_window")?.map(|v| v as u32),
        enabled: get_bool(r, "enabled")?,
    })
}

impl Store {
    pub async fn models(&self) -> Result<Vec<Model>, StoreError> {
        let rows = sqlx::query(&format!("{MODEL_SELECT} ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| model_from_row(r, &self.cipher))
            .collect()
    }

    pub async fn model(&self, name: &str) -> Result<Model, StoreError> {
        let sql = format!("{MODEL_SELECT} WHERE name = $1");
        self.find("model", &sql, name, |r| model_from_row(r, &self.cipher))
            .await
    }

    /// Creates or replaces a model. `upstream_key`: `None` keeps the stored
    /// one on update. The spec is stored [normalized](ModelSpec::normalized);
    /// its name and aliases must be free (409 naming `name` or `aliases`).
    pub async fn put_model(
        &self,
        actor: &str,
        spec: &ModelSpec,
        create: bool,
    ) -> Result<Model, StoreError> {
        spec.check_alias_count()?;
        let spec = &spec.normalized();
        spec.validate()?;
        let (mut tx, _writer) = self.begin().await?;
        let existing = sqlx::query("SELECT upstream_key FROM models WHERE name = $1")
            .bind(&spec.name)
            .fetch_optional(&mut *tx)
            .await?;
        match (&existing, create) {
            (Some(_), true) => {
                return Err(StoreError::Conflict(format!(
                    "model {:?} already exists",
                    spec.name
                )))
            }
            (None, false) => return Err(StoreError::NotFound(format!("model {:?}", spec.name))),
            _ => {}
        }
        if !create {
            sqlx::query("DELETE FROM model_names WHERE model = $1")
                .bind(&spec.name)
                .execute(&mut *tx)
                .await?;
        }
        Self::check_names_free(&mut tx, spec).await?;
        let stored_key: Option<String> = match &spec.upstream_key {
            Some(k) if k.is_empty() => None,
            Some(k) => Some(self.cipher.seal(k).map_err(StoreError::Crypto)?),
            None => existing.and_then(|r| {
                r.try_get::<Option<String>, _>("upstream_key")
                    .ok()
                    .flatten()
            }),
        };
        let sql = if create {
            "INSERT INTO models (name, aliases, pool, base_url, upstream_model, upstream_key, input_cost_per_token,
               output_cost_per_token, max_in_flight, admission_weight, context_window, enabled, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)"
        } else {
            "UPDATE models SET aliases = $2, pool = $3, base_url = $4, upstream_model = $5, upstream_key = $6,
               input_cost_per_token = $7, output_cost_per_token = $8, max_in_flight = $9, admission_weight = $10,
               context_window = $11, enabled = $12, updated_at = $13 WHERE name = $1"
        };
        sqlx::query(sql)
            .bind(&spec.name)
            .bind(serde_json::to_string(&spec.aliases).unwrap_or_else(|_| "[]".into()))
            .bind(spec.pool.as_deref())
            .bind(spec.base_url.as_deref())
            .bind(&spec.upstream_model)
            .bind(stored_key)
            .bind(spec.input_cost_per_token)
            .bind(spec.output_cost_per_token)
            .bind(i64::from(spec.max_in_flight))
            .bind(i64::from(spec.admission_weight))
            .bind(spec.context_window.map(i64::from))
            .bind(spec.enabled)
            .bind(unix_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, &format!("model {:?}", spec.name)))?;
        Self::claim_names(&mut tx, spec).await?;
        let action = if create {
            "model.create"
        } else {
            "model.update"
        };
        Self::audit(
            &mut tx,
            actor,
            action,
            "model",
            &spec.name,
            &spec.redacted(),
        )
        .await?;
        tx.commit().await?;
        self.model(&spec.name).await
    }

    /// Refuses a name or alias that another model already uses, naming the
    /// field and the owner.
    async fn check_names_free(
        tx: &mut Transaction<'static, Any>,
        spec: &ModelSpec,
    ) -> Result<(), StoreError> {
        for (field, name) in spec.claimed_names() {
            let owner = sqlx::query("SELECT model FROM model_names WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
            if let Some(row) = owner {
                let owner: String = row.try_get("model")?;
                let what = if &owner == name {
                    "the name"
                } else {
                    "an alias"
                };
                return Err(StoreError::conflict_on(
                    field,
                    format!("{name:?} is already {what} of the model {owner:?}; names and aliases of all models are one namespace"),
                ));
            }
        }
        Ok(())
    }

    /// Records the model's name and aliases in `model_names`. A concurrent
    /// writer that claimed one of them first makes the insert fail on the
    /// primary key: that is the race-free part of the check above.
    async fn claim_names(
        tx: &mut Transaction<'static, Any>,
        spec: &ModelSpec,
    ) -> Result<(), StoreError> {
        for (field, name) in spec.claimed_names() {
            sqlx::query("INSERT INTO model_names (name, model) VALUES ($1, $2)")
                .bind(name)
                .bind(&spec.name)
                .execute(&mut **tx)
                .await
                .map_err(|e| match classify(e, "model name") {
                    StoreError::Conflict(_) => StoreError::conflict_on(
                        field,
                        format!("{name:?} was just taken by another model; names and aliases of all models are one namespace"),
                    ),
                    other => other,
                })?;
        }
        Ok(())
    }

    pub async fn delete_model(&self, actor: &str, name: &str) -> Result<(), StoreError> {
        self.delete(actor, "models", "name", "model", name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_a_set_without_the_models_own_name() {
        let spec = ModelSpec {
            name: "m".into(),
            aliases: vec!["a".into(), "m".into(), "b".into(), "a".into()],
            pool: Some("p".into()),
            base_url: None,
            upstream_model: String::new(),
            upstream_key: None,
            input_cost_per_token: 0.0,
            output_cost_per_token: 0.0,
            max_in_flight: 1,
            admission_weight: 1,
            context_window: None,
            enabled: true,
        }
        .normalized();
        assert_eq!(spec.aliases, ["a", "b"]);
        assert_eq!(spec.upstream_model, "m");
    }
}
