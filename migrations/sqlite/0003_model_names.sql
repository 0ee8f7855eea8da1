-- Model names and aliases are one namespace: every string that selects a
-- model (its name or one of its aliases) has one row here, and the primary
-- key makes a second claim fail even when two writers race.
CREATE TABLE model_names (
    name  TEXT PRIMARY KEY,
    model TEXT NOT NULL REFERENCES models (name) ON DELETE CASCADE
);
CREATE INDEX model_names_model ON model_names (model);

-- Rows written before the rule: names first (a name always wins), then
-- aliases in model order; an alias that clashes stays in models.aliases
-- unclaimed, so the model's next update is refused until it is removed.
INSERT INTO model_names (name, model) SELECT name, name FROM models;
INSERT OR IGNORE INTO model_names (name, model)
    SELECT j.value, m.name FROM models m, json_each(m.aliases) AS j
    ORDER BY m.name;
