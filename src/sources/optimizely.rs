//! An Optimizely Feature Experimentation datafile mapped to flags that decide exactly as
//! Optimizely's SDKs do.
//!
//! Each feature flag that defines a `model_id` variable becomes a flag. Its rules are its
//! `Running` experiments in `experimentIds` order (with forced users, mutual-exclusion groups
//! and "try the next rule" when not allocated), then its rollout's delivery rules (a user whose
//! audience matches but who is not allocated jumps to the last, "Everyone Else"). Each
//! variation's variables become the AI configuration by name (`model_id`, `provider`,
//! `system_prompt_variant`, `temperature`, `token_budget`, `tool_policy`, `fallback_behavior`,
//! `retrieval_profile`); the rest are free variables. A variation with `featureEnabled = false`
//! serves the flag's defaults, as the SDKs do; a user no rule takes gets the defaults too, as
//! the variation `off`.

pub mod audiences;
pub mod events;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::flags::{
    DatafileRule, FallbackBehavior, Flag, Group, PromptMode, Range, Rule, ToolPolicy, Variation,
};
use audiences::AudienceMap;

/// The attribute whose string value replaces the user id in hashes.
pub const BUCKETING_ID_ATTRIBUTE: &str = "$opt_bucketing_id";

/// The variable names that make up the AI configuration.
pub const CONFIG_VARIABLES: [&str; 8] = [
    "provider",
    "model_id",
    "system_prompt_variant",
    "temperature",
    "token_budget",
    "tool_policy",
    "fallback_behavior",
    "retrieval_profile",
];

/// The parts of a datafile that decisions read (other members are ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Datafile {
    /// Datafile format version ("4").
    pub version: String,
    /// The project's revision, which grows with every change.
    pub revision: String,
    #[serde(default)]
    account_id: String,
    #[serde(default)]
    project_id: String,
    #[serde(default, rename = "anonymizeIP")]
    anonymize_ip: bool,
    #[serde(default)]
    bot_filtering: Option<bool>,
    #[serde(default)]
    experiments: Vec<Experiment>,
    #[serde(default)]
    groups: Vec<GroupDef>,
    #[serde(default)]
    feature_flags: Vec<FeatureFlag>,
    #[serde(default)]
    rollouts: Vec<RolloutDef>,
    #[serde(default)]
    audiences: Vec<AudienceDef>,
    #[serde(default)]
    typed_audiences: Vec<AudienceDef>,
    #[serde(default)]
    holdouts: Vec<Value>,
    #[serde(default)]
    local_holdouts: Vec<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Experiment {
    id: String,
    key: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    layer_id: String,
    #[serde(default)]
    variations: Vec<VariationDef>,
    #[serde(default)]
    traffic_allocation: Vec<Allocation>,
    #[serde(default)]
    audience_ids: Vec<String>,
    #[serde(default)]
    audience_conditions: Option<Value>,
    #[serde(default)]
    forced_variations: HashMap<String, String>,
    #[serde(default)]
    cmab: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VariationDef {
    id: String,
    key: String,
    #[serde(default)]
    feature_enabled: Option<bool>,
    #[serde(default)]
    variables: Vec<VariableValue>,
}

#[derive(Debug, Clone, Deserialize)]
struct VariableValue {
    id: String,
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Allocation {
    entity_id: String,
    end_of_range: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupDef {
    id: String,
    #[serde(default)]
    policy: String,
    #[serde(default)]
    experiments: Vec<Experiment>,
    #[serde(default)]
    traffic_allocation: Vec<Allocation>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FeatureFlag {
    key: String,
    #[serde(default)]
    rollout_id: String,
    #[serde(default)]
    experiment_ids: Vec<String>,
    #[serde(default)]
    variables: Vec<VariableDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VariableDef {
    id: String,
    key: String,
    #[serde(rename = "type")]
    kind: String,
    /// `"json"` on a `string` variable makes it a JSON variable (as the SDKs read it).
    #[serde(default)]
    sub_type: String,
    default_value: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RolloutDef {
    id: String,
    #[serde(default)]
    experiments: Vec<Experiment>,
}

#[derive(Debug, Clone, Deserialize)]
struct AudienceDef {
    id: String,
    #[serde(default)]
    conditions: Value,
}

impl Datafile {
    /// Parses a datafile; only version 4 is understood.
    pub fn parse(bytes: &[u8]) -> Result<Datafile, String> {
        let d: Datafile = serde_json::from_slice(bytes)
            .map_err(|e| format!("the datafile does not parse: {e}"))?;
        if d.version != "4" {
            return Err(format!(
                "datafile version {:?} is not supported (version \"4\" is)",
                d.version
            ));
        }
        Ok(d)
    }
}

/// What a mapping produced besides its flags.
#[derive(Debug, Default)]
pub struct Mapped {
    /// The flags, in datafile order.
    pub flags: Vec<Arc<Flag>>,
    /// Feature flags left out because they define no `model_id` variable.
    pub skipped: Vec<String>,
    /// Conditions evaluated as unknown (as the SDKs do), for the status page.
    pub notes: Vec<String>,
    /// The ids decision events name.
    pub event_ids: events::EventIds,
}

/// Maps `d` onto flags, resolving providers, prompts and tool policies against `config`
/// (`default_provider` serves variations without a `provider` variable). Every problem is
/// reported; any problem rejects the whole datafile.
pub fn to_flags(
    d: &Datafile,
    config: &Config,
    default_provider: Option<&str>,
) -> Result<Mapped, Vec<String>> {
    let mut errors = Vec::new();
    let Some(placeholder) = config.providers.values().next().cloned() else {
        return Err(vec![
            "the proxy's config defines no providers for datafile flags to use".into(),
        ]);
    };
    if !d.holdouts.is_empty() || !d.local_holdouts.is_empty() {
        errors.push("the datafile has holdouts, which Switchyard does not evaluate".to_owned());
    }
    let mut experiments: HashMap<&str, (&Experiment, Option<&GroupDef>)> = HashMap::new();
    for e in &d.experiments {
        experiments.insert(&e.id, (e, None));
    }
    for g in &d.groups {
        for e in &g.experiments {
            let group = (g.policy == "random").then_some(g);
            experiments.insert(&e.id, (e, group));
        }
    }
    let rollouts: HashMap<&str, &RolloutDef> =
        d.rollouts.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut audiences = AudienceMap::new(
        d.audiences
            .iter()
            .chain(&d.typed_audiences)
            .map(|a| (a.id.as_str(), &a.conditions)),
    );
    let mut out = Mapped {
        event_ids: events::EventIds {
            account_id: d.account_id.clone(),
            project_id: d.project_id.clone(),
            revision: d.revision.clone(),
            anonymize_ip: d.anonymize_ip,
            bot_filtering: d.bot_filtering,
            decisions: HashMap::new(),
        },
        ..Mapped::default()
    };
    for feature in &d.feature_flags {
        if !feature.variables.iter().any(|v| v.key == "model_id") {
            out.skipped.push(feature.key.clone());
            continue;
        }
        let mut ctx = FeatureCtx {
            feature,
            config,
            default_provider,
            placeholder: placeholder.clone(),
            errors: Vec::new(),
            variations: Vec::new(),
            values_by_index: Vec::new(),
            ids: HashMap::new(),
        };
        let mut rules = Vec::new();
        for id in &feature.experiment_ids {
            let Some(&(e, group)) = experiments.get(id.as_str()) else {
                continue;
            };
            if e.status != "Running" {
                continue;
            }
            if e.cmab.as_ref().is_some_and(|c| !c.is_null()) {
                ctx.errors.push(format!(
                    "experiment {:?} is a contextual bandit (CMAB), which Switchyard does not evaluate",
                    e.key
                ));
                continue;
            }
            rules.push(ctx.rule(e, group, true, &mut audiences));
            ctx.event_ids(e, true, &mut out.event_ids);
        }
        if let Some(rollout) = rollouts.get(feature.rollout_id.as_str()) {
            for e in &rollout.experiments {
                rules.push(ctx.rule(e, None, false, &mut audiences));
                ctx.event_ids(e, false, &mut out.event_ids);
            }
        }
        let off = ctx.off_variation();
        let FeatureCtx {
            errors: mut fe,
            variations,
            ..
        } = ctx;
        errors.append(&mut fe);
        let experiment_rule = rules.iter().position(|r: &Rule| {
            r.datafile.as_ref().is_some_and(|x| x.experiment) && r.allocation.len() >= 2
        });
        out.flags.push(Arc::new(Flag {
            key: feature.key.clone(),
            description: Some(format!("Optimizely datafile, revision {}", d.revision)),
            enabled: true,
            off_variation: off,
            stable_variation: off,
            system_prompt_mode: PromptMode::Replace,
            force_fallback: false,
            responder: config.default_responder.clone(),
            variations,
            rules,
            experiment_rule,
            bucketing_id_attribute: Some(BUCKETING_ID_ATTRIBUTE.to_owned()),
        }));
    }
    let mut notes = std::mem::take(&mut audiences.unsupported);
    notes.sort();
    notes.dedup();
    out.notes = notes;
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

struct FeatureCtx<'a> {
    feature: &'a FeatureFlag,
    config: &'a Config,
    default_provider: Option<&'a str>,
    placeholder: Arc<crate::providers::Provider>,
    errors: Vec<String>,
    variations: Vec<Variation>,
    /// The typed variable values of each variation (what tells two apart), by index.
    values_by_index: Vec<Value>,
    /// Datafile variation id → index.
    ids: HashMap<String, usize>,
}

impl FeatureCtx<'_> {
    /// Records the decision-event ids of rule `e`'s variations.
    fn event_ids(&self, e: &Experiment, experiment: bool, out: &mut events::EventIds) {
        for v in &e.variations {
            let Some(variation) = self.ids.get(&v.id).and_then(|&i| self.variations.get(i)) else {
                continue;
            };
            out.decisions.insert(
                (
                    self.feature.key.clone(),
                    e.id.clone(),
                    variation.key.clone(),
                ),
                events::DecisionIds {
                    campaign_id: e.layer_id.clone(),
                    experiment_id: e.id.clone(),
                    variation_id: v.id.clone(),
                    rule_key: e.key.clone(),
                    rule_type: if experiment {
                        "feature-test"
                    } else {
                        "rollout"
                    },
                    enabled: v.feature_enabled.unwrap_or(false),
                },
            );
        }
    }

    fn rule(
        &mut self,
        e: &Experiment,
        group: Option<&GroupDef>,
        experiment: bool,
        audiences: &mut AudienceMap,
    ) -> Rule {
        let mut index_by_id = HashMap::new();
        for v in &e.variations {
            let i = self.variation(v, &e.key);
            index_by_id.insert(v.id.as_str(), i);
        }
        let allocation = e
            .traffic_allocation
            .iter()
            .map(|a| Range {
                variation: index_by_id.get(a.entity_id.as_str()).copied(),
                end: a.end_of_range.clamp(0, i64::from(u32::MAX)) as u32,
            })
            .collect();
        let forced = if experiment {
            let mut forced: Vec<(String, usize)> = e
                .forced_variations
                .iter()
                .filter_map(|(user, key)| {
                    let v = e.variations.iter().find(|v| &v.key == key)?;
                    Some((user.clone(), *index_by_id.get(v.id.as_str())?))
                })
                .collect();
            forced.sort();
            forced
        } else {
            Vec::new()
        };
        let group = group.map(|g| Group {
            id: g.id.clone(),
            ranges: g
                .traffic_allocation
                .iter()
                .map(|a| {
                    (
                        a.end_of_range.clamp(0, i64::from(u32::MAX)) as u32,
                        a.entity_id == e.id,
                    )
                })
                .collect(),
        });
        let audience = audiences
            .rule_condition(e.audience_conditions.as_ref(), &e.audience_ids)
            .map(|c| (format!("optimizely:{}", e.key), Arc::new(c)));
        Rule {
            id: e.id.clone(),
            audience,
            allocation,
            rollout: None,
            datafile: Some(Arc::new(DatafileRule {
                key: e.key.clone(),
                forced,
                group,
                experiment,
            })),
        }
    }

    /// The index of datafile variation `v`, added on first sight.
    fn variation(&mut self, v: &VariationDef, rule_key: &str) -> usize {
        if let Some(&i) = self.ids.get(&v.id) {
            return i;
        }
        let enabled = v.feature_enabled.unwrap_or(false);
        let values = self.values(enabled.then_some(&v.variables));
        let json = values_json(&values);
        // Variations of one flag share keys across rules; a key reused for a different
        // configuration is told apart by its rule.
        for key in [v.key.clone(), format!("{rule_key}.{}", v.key)] {
            match self.variations.iter().position(|x| x.key == key) {
                Some(i) if self.values_by_index[i] == json => {
                    self.ids.insert(v.id.clone(), i);
                    return i;
                }
                Some(_) => continue,
                None => return self.push(&key, &values, json, Some(&v.id)),
            }
        }
        let key = format!("{rule_key}.{}.{}", v.key, v.id);
        self.push(&key, &values, json, Some(&v.id))
    }

    fn push(
        &mut self,
        key: &str,
        values: &[(String, Value)],
        json: Value,
        id: Option<&str>,
    ) -> usize {
        let variation = self.build(key, values);
        self.variations.push(variation);
        self.values_by_index.push(json);
        let i = self.variations.len() - 1;
        if let Some(id) = id {
            self.ids.insert(id.to_owned(), i);
        }
        i
    }

    /// The variation served when no rule takes the user (and while the flag is killed): the
    /// defaults, keyed `off` (or `_off` when a variation with other values took that key).
    fn off_variation(&mut self) -> usize {
        let values = self.values(None);
        let json = values_json(&values);
        for key in ["off", "_off"] {
            match self.variations.iter().position(|x| x.key == key) {
                Some(i) if self.values_by_index[i] == json => return i,
                Some(_) => continue,
                None => return self.push(key, &values, json, None),
            }
        }
        self.push("_defaults", &values, json, None)
    }

    /// Typed variable values: the variation's own where `overrides` has them, else defaults.
    fn values(&mut self, overrides: Option<&Vec<VariableValue>>) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for def in &self.feature.variables {
            let raw = overrides
                .and_then(|o| o.iter().find(|x| x.id == def.id))
                .map_or(def.default_value.as_str(), |x| x.value.as_str());
            let kind = if def.kind == "string" && def.sub_type == "json" {
                "json"
            } else {
                def.kind.as_str()
            };
            let value = match kind {
                "boolean" => Value::Bool(raw == "true"),
                "integer" => raw
                    .trim()
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or(Value::Null),
                "double" => raw
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number),
                "json" => serde_json::from_str(raw).unwrap_or(Value::Null),
                _ => Value::String(raw.to_owned()),
            };
            out.push((def.key.clone(), value));
        }
        out
    }

    /// A variation from typed variable values.
    fn build(&mut self, key: &str, values: &[(String, Value)]) -> Variation {
        let flag = self.feature.key.clone();
        let get = |name: &str| values.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let text = |name: &str| {
            get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let err = |errors: &mut Vec<String>, var: &str, m: String| {
            errors.push(format!(
                "flag {flag:?}, variation {key:?}, variable {var:?}: {m}"
            ));
        };
        let provider_name = text("provider").or_else(|| self.default_provider.map(str::to_owned));
        let provider = match &provider_name {
            Some(p) => self.config.providers.get(p).cloned(),
            None if self.config.providers.len() == 1 => {
                self.config.providers.values().next().cloned()
            }
            None => None,
        };
        if provider.is_none() {
            let m = match &provider_name {
                Some(p) => format!("unknown provider {p:?} (not in the proxy's config)"),
                None => "no provider: set a `provider` variable or [sources.optimizely] provider"
                    .to_owned(),
            };
            err(&mut self.errors, "provider", m);
        }
        let model_id = text("model_id").unwrap_or_default();
        if model_id.is_empty() {
            err(&mut self.errors, "model_id", "must not be empty".into());
        }
        let system_prompt = match text("system_prompt_variant") {
            None => None,
            Some(name) => match self.config.prompts.get(&name) {
                Some(t) => Some((name, t.clone())),
                None => {
                    err(
                        &mut self.errors,
                        "system_prompt_variant",
                        format!("unknown prompt {name:?} (not in [prompts])"),
                    );
                    None
                }
            },
        };
        let temperature = get("temperature").and_then(Value::as_f64);
        if let Some(t) = temperature {
            if !(0.0..=2.0).contains(&t) {
                err(
                    &mut self.errors,
                    "temperature",
                    format!("{t} is out of range (0 ..= 2)"),
                );
            }
        }
        let token_budget = match get("token_budget").and_then(Value::as_i64) {
            None | Some(0) => None,
            Some(n) if (1..=10_000_000).contains(&n) => Some(n as u32),
            Some(n) => {
                err(
                    &mut self.errors,
                    "token_budget",
                    format!("{n} is out of range (1 ..= 10000000)"),
                );
                None
            }
        };
        let tool_policy = match text("tool_policy").as_deref() {
            None | Some("all") => ToolPolicy::All,
            Some("none") => ToolPolicy::None,
            Some(name) => match self.config.tool_policies.get(name) {
                Some(tools) => ToolPolicy::Allow {
                    name: name.to_owned(),
                    tools: tools.clone(),
                },
                None => {
                    err(
                        &mut self.errors,
                        "tool_policy",
                        format!("unknown tool policy {name:?}"),
                    );
                    ToolPolicy::All
                }
            },
        };
        let fallback_behavior = match text("fallback_behavior").as_deref() {
            None | Some("error") => FallbackBehavior::Error,
            Some("rule-based") => FallbackBehavior::RuleBased,
            // The stable variation of a datafile flag is its defaults.
            Some("stable") => FallbackBehavior::RuleBased,
            Some(other) => {
                err(
                    &mut self.errors,
                    "fallback_behavior",
                    format!("{other:?} is not one of \"rule-based\", \"stable\", \"error\""),
                );
                FallbackBehavior::Error
            }
        };
        let mut variables = Map::new();
        variables.insert("provider".into(), provider_name.clone().into());
        variables.insert("model_id".into(), model_id.clone().into());
        variables.insert(
            "system_prompt_variant".into(),
            system_prompt.as_ref().map(|(n, _)| n.clone()).into(),
        );
        variables.insert("temperature".into(), temperature.into());
        variables.insert("token_budget".into(), token_budget.into());
        variables.insert("tool_policy".into(), tool_policy.name().into());
        variables.insert(
            "fallback_behavior".into(),
            text("fallback_behavior")
                .unwrap_or_else(|| "error".into())
                .into(),
        );
        variables.insert("retrieval_profile".into(), text("retrieval_profile").into());
        for (k, v) in values {
            if !CONFIG_VARIABLES.contains(&k.as_str()) {
                variables.insert(k.clone(), v.clone());
            }
        }
        // With an error recorded the datafile is rejected: any provider stands in.
        let provider = provider.unwrap_or_else(|| self.placeholder.clone());
        let timeouts = provider.timeouts;
        Variation {
            key: key.to_owned(),
            provider,
            model_id,
            system_prompt,
            temperature,
            token_budget,
            tool_policy,
            fallback_behavior,
            retrieval_profile: text("retrieval_profile"),
            variables: Value::Object(variables),
            force_fallback: false,
            timeouts,
            cache: None,
        }
    }
}

/// The `variables` object two variations are compared by.
fn values_json(values: &[(String, Value)]) -> Value {
    Value::Object(values.iter().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        Config::parse(
            "[providers.mock]\nkind = \"mock\"\n[prompts]\nbrief = \"Be brief.\"\n",
            "test.toml",
        )
        .unwrap()
    }

    fn datafile(extra: Value) -> Datafile {
        let mut d = json!({
            "version": "4", "revision": "7",
            "experiments": [
                {"id": "1", "key": "e1", "status": "Running", "variations": [
                    {"id": "11", "key": "same", "featureEnabled": true, "variables": [{"id": "m", "value": "m1"}]}],
                 "trafficAllocation": [{"entityId": "11", "endOfRange": 10000}]},
                {"id": "2", "key": "e2", "status": "Running", "variations": [
                    {"id": "21", "key": "same", "featureEnabled": true, "variables": [{"id": "m", "value": "m2"}]},
                    {"id": "22", "key": "dark", "featureEnabled": false, "variables": [{"id": "m", "value": "ignored"}]}],
                 "trafficAllocation": [{"entityId": "21", "endOfRange": 5000}, {"entityId": "22", "endOfRange": 10000}]}
            ],
            "featureFlags": [
                {"id": "f", "key": "ai", "experimentIds": ["1", "2"], "rolloutId": "", "variables": [
                    {"id": "m", "key": "model_id", "type": "string", "defaultValue": "m0"},
                    {"id": "n", "key": "limit", "type": "integer", "defaultValue": "3"},
                    {"id": "j", "key": "ui", "type": "string", "subType": "json", "defaultValue": "{\"a\": [1]}"},
                    {"id": "p", "key": "system_prompt_variant", "type": "string", "defaultValue": "brief"}]},
                {"id": "g", "key": "banner", "experimentIds": [], "rolloutId": "", "variables": []}
            ]
        });
        if let (Value::Object(d), Value::Object(e)) = (&mut d, extra) {
            d.extend(e);
        }
        serde_json::from_value(d).unwrap()
    }

    #[test]
    fn variations_keep_their_keys_unless_a_key_means_two_configurations() {
        let m = to_flags(&datafile(json!({})), &config(), None).unwrap();
        assert_eq!(m.skipped, ["banner"]);
        let f = &m.flags[0];
        let keys: Vec<&str> = f.variations.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["same", "e2.same", "dark", "off"]);
        assert_eq!(f.variations[1].model_id, "m2");
        // A disabled variation serves the defaults, typed.
        let dark = &f.variations[2].variables;
        assert_eq!(dark["model_id"], "m0");
        assert_eq!(dark["limit"], 3);
        assert_eq!(dark["ui"], json!({"a": [1]}));
        assert_eq!(dark["system_prompt_variant"], "brief");
        assert_eq!(f.off_variation, 3);
        assert!(f
            .rules
            .iter()
            .all(|r| r.datafile.as_ref().unwrap().experiment));
        assert_eq!(
            f.bucketing_id_attribute.as_deref(),
            Some(BUCKETING_ID_ATTRIBUTE)
        );
    }

    #[test]
    fn holdouts_unknown_prompts_and_bad_versions_are_rejected() {
        let e = to_flags(
            &datafile(json!({"holdouts": [{"id": "h"}]})),
            &config(),
            None,
        )
        .unwrap_err();
        assert!(e[0].contains("holdouts"), "{e:?}");
        let mut d = datafile(json!({}));
        d.feature_flags[0].variables[3].default_value = "nope".into();
        let e = to_flags(&d, &config(), None).unwrap_err();
        assert!(
            e.iter().any(|m| m.contains("unknown prompt \"nope\"")),
            "{e:?}"
        );
        assert!(Datafile::parse(br#"{"version": "2", "revision": "1"}"#).is_err());
        assert!(Datafile::parse(b"{")
            .unwrap_err()
            .contains("does not parse"));
    }
}
